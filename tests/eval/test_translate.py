"""Translation baselines and tasks: IBM Model 1's EM against a hand-computed step and against nltk,
the lexicon it learns on a toy parallel corpus, spacing, the copy baseline's BLEU against sacrebleu
directly, and the Multi30k / Europarl built-in tasks on ../shared/data."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from lmforge.eval.baselines import get_baseline
from lmforge.eval.classic.translate import NULL, Spacing, fit_ibm1, translate_words, words
from lmforge.eval.records import Doc
from lmforge.eval.tasks import Task, evaluate_baseline, load_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data is absent (development machine only)"
)

# every English word co-occurs with its French word more than with any other
TOY = [
    ("the house", "la maison"),
    ("the flower", "la fleur"),
    ("a house", "une maison"),
    ("a flower", "une fleur"),
    ("the small house", "la petite maison"),
    ("a small flower", "une petite fleur"),
    ("the house is small", "la maison est petite"),
    ("a flower is red", "une fleur est rouge"),
    ("the red house", "la maison rouge"),
]


def _doc(src: str, tgt: str) -> Doc:
    return Doc(f"English: {src}\nFrench:", references=[tgt], fields={"source": src})


def _task(docs: list[tuple[str, str]], pool: list[tuple[str, str]] | None) -> Task:
    return Task(
        "toy",
        "generation",
        [_doc(*p) for p in docs],
        [_doc(*p) for p in pool] if pool is not None else None,
        metrics=("bleu", "chrf"),
    )


def test_one_em_step_matches_the_hand_computation() -> None:
    # from uniform t = 1/2: pair 1 spreads x over {NULL, a}; pair 2 spreads x and y over {NULL, a, b}
    # counts: (NULL|a, x) = 1/2 + 1/3, (NULL|a, y) = 1/3, (b, x) = (b, y) = 1/3
    table = fit_ibm1([(["a"], ["x"]), (["a", "b"], ["x", "y"])], iterations=1).table()
    expected = {
        (NULL, "x"): 5 / 7,
        (NULL, "y"): 2 / 7,
        ("a", "x"): 5 / 7,
        ("a", "y"): 2 / 7,
        ("b", "x"): 1 / 2,
        ("b", "y"): 1 / 2,
    }
    assert table.keys() == expected.keys()
    for k, v in expected.items():
        assert table[k] == pytest.approx(v, abs=1e-12), k


def test_ibm1_learns_the_toy_lexicon() -> None:
    model = fit_ibm1([(s.split(), t.split()) for s, t in TOY], iterations=20)
    assert model.best() == {
        "the": "la",
        "a": "une",
        "house": "maison",
        "flower": "fleur",
        "small": "petite",
        "is": "est",
        "red": "rouge",
    }
    # probabilities of each source word sum to one over the target words
    sums: dict[str, float] = {}
    for (e, _), p in model.table().items():
        sums[e] = sums.get(e, 0.0) + p
    assert all(s == pytest.approx(1.0) for s in sums.values())


def test_ibm1_equals_nltk() -> None:
    nltk_translate = pytest.importorskip("nltk.translate")
    bitext = [(s.split(), t.split()) for s, t in TOY]
    ours = fit_ibm1(bitext, iterations=5).table()
    ref = nltk_translate.IBMModel1([nltk_translate.AlignedSent(t, s) for s, t in bitext], 5)
    for (e, f), p in ours.items():
        assert ref.translation_table[f][None if e == NULL else e] == pytest.approx(p, rel=1e-9), (e, f)


def test_ibm1_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="iterations"):
        fit_ibm1([(["a"], ["x"])], iterations=0)
    with pytest.raises(ValueError, match="no pair"):
        fit_ibm1([([], ["x"]), (["a"], [])])


def test_words_and_spacing_follow_the_training_targets() -> None:
    assert words("L'homme, au chapeau-melon.") == ["L'", "homme", ",", "au", "chapeau-melon", "."]
    raw = Spacing.fit(["L'homme court, vite.", "l'herbe est verte."])
    assert raw.join(["l'", "herbe", "en", "ville", ",", "vite", "."]) == "l'herbe en ville, vite."
    tokenized = Spacing.fit(["L' homme court , vite .", "l' herbe est verte ."])
    assert tokenized.join(["l'", "herbe", ",", "vite", "."]) == "l' herbe , vite ."
    lexicon = {"the": "la", "house": "maison"}
    assert translate_words(["the house of Anna."], lexicon, raw) == ["la maison of Anna."]


def test_ibm1_baseline_fits_on_the_pool_only() -> None:
    task = _task([("the small flower", "la petite fleur"), ("a red house", "une maison rouge")], TOY)
    ibm1 = get_baseline("ibm1")
    out = ibm1.run(task)
    assert out == ["la petite fleur", "une rouge maison"]  # word by word: no reordering
    for d in task.docs:  # the evaluated docs' references are never read
        d.references = ["?"]
    assert ibm1.run(task) == out
    assert not ibm1.applies(_task([("a", "b")], None))  # it needs a training split


def test_copy_baseline_bleu_equals_sacrebleu() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    pairs = [("Anna runs to Paris.", "Anna court à Paris."), ("The 3 dogs of Bob.", "Les 3 chiens de Bob.")]
    task = _task(pairs, None)
    result = evaluate_baseline(get_baseline("copy"), task)
    sources, refs = [s for s, _ in pairs], [[t for _, t in pairs]]
    assert result["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(sources, refs).score)
    assert result["metrics"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(sources, refs).score)
    assert result["metrics"]["bleu"] > 0  # names and numbers are shared


@needs_shared
def test_multi30k_en_fr_task() -> None:
    task = load_task("multi30k_en_fr", data_dir=SHARED)
    assert len(task.docs) == 1000 and len(task.fewshot_pool or []) == 29000
    d = task.docs[0]
    assert d.fields == {
        "source": "A man in an orange hat starring at something.",
        "source_language": "English",
        "target_language": "French",
    }
    assert d.query == f"English: {d.fields['source']}\nFrench:"
    assert d.references == ["Un homme avec un chapeau orange regardant quelque chose."]
    assert task.metrics == ("bleu", "chrf") and task.until == ("\n",)


@needs_shared
def test_europarl_en_fr_is_split_and_unescaped() -> None:
    task = load_task("europarl_en_fr", data_dir=SHARED)
    pool = task.fewshot_pool or []
    assert len(task.docs) == 1000 and len(pool) > 18000
    texts = [d.fields["source"] + d.references[0] for d in task.docs + pool]
    assert not any("&apos;" in t or "&quot;" in t for t in texts)
    assert any("l' " in d.references[0] for d in task.docs)  # still Moses-tokenized
    lines = (SHARED / "europarl-en-fr-20k" / "europarl-v7.fr-en.en").read_text(encoding="utf-8").splitlines()
    tail = [html.unescape(x) for x in lines if x.strip()][-1001:]
    assert [d.fields["source"] for d in task.docs] == tail[1:]  # the test split is the file's tail
    assert pool[-1].fields["source"] == tail[0]
