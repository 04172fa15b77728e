"""Question answering: the leak-free SQuAD/BoolQ splits, EM/F1 normalisation against hand-computed cases,
and the classic baselines (sliding window, bag of words) on hand-built passages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmforge.errors import InputError
from lmforge.eval.baselines import get_baseline
from lmforge.eval.classic.qa import _distance, _sliding_window, fit_max_len, predict_span, score_candidates
from lmforge.eval.loaders_qa import boolq, is_boolq_test, squad
from lmforge.eval.metrics import exact_match, normalize_answer, squad_f1
from lmforge.eval.records import Doc
from lmforge.eval.tasks import Task, evaluate_baseline, load_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _squad_file(tmp_path: Path, n_articles: int) -> Path:
    data = [
        {
            "title": f"Article_{a}",
            "paragraphs": [
                {
                    "context": f"Context {a}.{p}",
                    "qas": [
                        {"question": f"Q {a}.{p} ", "answers": [{"text": "x"}, {"text": "x"}, {"text": "y"}]}
                    ],
                }
                for p in range(2)
            ],
        }
        for a in range(n_articles)
    ]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": data}))
    return path


def test_squad_is_split_by_article_with_fields_and_every_answer() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = _squad_file(Path(d), 8)
        train, test = squad(path, "train"), squad(path, "test")
        everything = squad(path)
    # a quarter of 8 articles (the last 2) is the test split; 2 paragraphs of one question each
    assert [doc.fields["title"] for doc in test] == ["Article 6", "Article 6", "Article 7", "Article 7"]
    assert {doc.fields["title"] for doc in train} == {f"Article {a}" for a in range(6)}
    assert len(everything) == len(train) + len(test) == 16
    doc = test[0]
    assert doc.references == ["x", "y"]  # duplicates dropped, every answer kept
    assert doc.fields == {"title": "Article 6", "context": "Context 6.0", "question": "Q 6.0"}
    assert doc.query == "Title: Article 6\n\nBackground: Context 6.0\n\nQuestion: Q 6.0\n\nAnswer:"


def test_squad_split_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least two"):
        squad(_squad_file(tmp_path, 1), "test")
    with pytest.raises(InputError, match="expected one of"):
        squad(_squad_file(tmp_path, 4), "dev")


def test_boolq_is_split_by_passage_title_and_a_shared_passage_cannot_straddle(tmp_path: Path) -> None:
    titles = [f"Page {i}" for i in range(40)]
    rows = [
        {"title": t, "passage": f"About {t}.", "question": f"is {t} {q}", "answer": q == 0}
        for t in titles
        for q in range(3)
    ]
    # one passage filed under two titles: it goes where the smaller title goes
    test_title = next(t for t in titles if is_boolq_test(t))
    train_title = next(t for t in titles if not is_boolq_test(t) and t > test_title)
    rows.append(
        {"title": train_title, "passage": f"About {test_title}.", "question": "shared", "answer": True}
    )
    path = tmp_path / "boolq.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, test = boolq(path, "train"), boolq(path, "test")
    assert len(train) + len(test) == len(rows) and train and test
    assert not {d.fields["title"] for d in test} & {d.fields["title"] for d in train} - {train_title}
    assert not {d.fields["passage"] for d in test} & {d.fields["passage"] for d in train}
    shared = next(d for d in test + train if d.fields["question"] == "shared")
    assert shared in test  # keyed by test_title, the smaller of its two titles
    assert all(is_boolq_test(d.fields["title"]) for d in test if d is not shared)
    d = test[0]
    assert (
        d.choices == ["no", "yes"]
        and d.query.endswith("?\nAnswer:")
        and set(d.fields)
        == {
            "title",
            "passage",
            "question",
        }
    )


def test_boolq_split_needs_titles(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps({"passage": "p", "question": "q", "answer": True}))
    assert len(boolq(path)) == 1  # unsplit: fine
    with pytest.raises(InputError, match="no title"):
        boolq(path, "test")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)")
def test_builtin_squad_and_boolq_splits_do_not_leak() -> None:
    sq = load_task("squad", data_dir=SHARED)
    assert (len(sq.docs), len(sq.fewshot_pool)) == (2447, 8123)
    assert not {d.fields["title"] for d in sq.docs} & {d.fields["title"] for d in sq.fewshot_pool}
    assert not {d.fields["context"] for d in sq.docs} & {d.fields["context"] for d in sq.fewshot_pool}
    bq = load_task("boolq", data_dir=SHARED)
    assert (len(bq.docs), len(bq.fewshot_pool)) == (837, 2433)
    assert not {d.fields["title"] for d in bq.docs} & {d.fields["title"] for d in bq.fewshot_pool}
    assert not {d.fields["passage"] for d in bq.docs} & {d.fields["passage"] for d in bq.fewshot_pool}
    # the recipe's pretraining text (data sources task:squad@DIR, task:boolq@DIR) holds no test passage
    from lmforge.eval.corpus import task_texts

    passages = {*task_texts("squad", SHARED), *task_texts("boolq", SHARED)}
    assert len(passages) > 3000
    assert not passages & ({d.fields["context"] for d in sq.docs} | {d.fields["passage"] for d in bq.docs})


def test_squad_metrics_normalise_as_the_official_script() -> None:
    # lower-case, punctuation removed (also inside a token), articles only as whole words
    assert normalize_answer("The U.S. Army's") == "us armys"
    assert normalize_answer("Theater of an island") == "theater of island"
    assert normalize_answer("  A\tcat,  the  END ") == "cat end"
    # EM is the best over references
    assert exact_match(["the Denver Broncos"], [["Broncos", "Denver Broncos!"]]) == 1.0
    assert exact_match(["Broncos"], [["Denver Broncos"]]) == 0.0
    # F1 over bags of normalised tokens: pred {denver, broncos} vs ref {broncos}: P 1/2, R 1, F1 2/3
    assert squad_f1(["the Denver Broncos"], [["Broncos"]]) == pytest.approx(2 / 3)
    # repeated tokens count as often as both sides hold them: pred [cat] vs ref [cat, cat]: P 1, R 1/2
    assert squad_f1(["the the cat"], [["cat cat"]]) == pytest.approx(2 / 3)
    # mean over questions of the best reference: (2/3 + 0 + 1) / 3
    preds = ["the Denver Broncos", "Carolina", "1,000 men"]
    refs = [["Broncos", "Seattle"], ["Panthers"], ["1000 men", "men"]]
    assert squad_f1(preds, refs) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert exact_match(preds, refs) == pytest.approx(1 / 3)


def test_sliding_window_and_distance_hand_computed() -> None:
    ic = {"a": math.log(1 + 1 / 2), "b": math.log(2), "c": math.log(2)}
    # windows of |S| = 2 over [a b c a], S = {a, c}: a+0, 0+c, c+a -> the best is c + a
    assert _sliding_window(["a", "b", "c", "a"], {"a", "c"}, ic) == pytest.approx(math.log(2) + math.log(1.5))
    # a window wider than the sentence covers all of it
    assert _sliding_window(["a", "b"], {"a", "b", "x", "y"}, ic) == pytest.approx(math.log(1.5) + math.log(2))
    stop = frozenset({"the"})
    # question word at 1, the candidate's word at 3: distance 2 over (4 - 1)
    assert _distance(["x", "q", "y", "ans"], (3, 4), {"q"}, stop) == pytest.approx(2 / 3)
    assert _distance(["x", "q", "y", "ans"], (3, 4), {"z"}, stop) == 1.0  # no question word in the sentence
    assert _distance(["x", "q", "the"], (2, 3), {"q"}, stop) == 1.0  # the candidate is only a stop word


def test_sliding_window_picks_the_span_next_to_the_question_words() -> None:
    p = "The cat sat on the mat. Paris is the capital of France. Berlin lies in Germany."
    assert predict_span(p, "What is the capital of France?", 1) == "Paris"
    # both dates are in the sentence; each question's words sit next to one of them
    p2 = "Marie Curie won the Nobel Prize in physics in 1903 and the prize in chemistry in 1911."
    assert predict_span(p2, "When did Curie win the prize in chemistry?", 1) == "1911"
    assert predict_span(p2, "When did Curie win the Nobel Prize in physics?", 1) == "1903"
    # the sentence filter: a candidate that is a question word takes its own overlap away
    texts = {c[3] for c in score_candidates(p, "What is the capital of France?", 1)}
    assert "Paris" in texts and "capital" not in texts and "Berlin" not in texts
    assert predict_span("", "anything?") == ""


def test_fit_max_len_takes_the_length_with_the_best_training_f1() -> None:
    passage = "The bridge was opened in New York. The tunnel was opened in Boston."

    def doc(q: str, a: str) -> Doc:
        return Doc(q, references=[a], fields={"context": passage, "question": q})

    # max_len 1 answers "New" (F1 1/2 on the bridge) and "Boston"; 2 gets "New York" whole
    assert predict_span(passage, "Where was the bridge opened?", 1) == "New"
    assert predict_span(passage, "Where was the bridge opened?", 2) == "New York"
    pool = [doc("Where was the bridge opened?", "New York"), doc("Where was the tunnel opened?", "Boston")]
    assert fit_max_len(pool) == 2  # F1 1.0 at 2 and 3 (ties: the shorter)
    assert fit_max_len([doc("Where was the bridge opened?", "New")]) == 1


def test_sliding_window_baseline_through_the_eval_scorer() -> None:
    ctx = "Marie Curie won the Nobel Prize in physics in 1903 and the prize in chemistry in 1911."

    def doc(q: str, a: str) -> Doc:
        return Doc(q, references=[a], fields={"context": ctx, "question": q, "title": "Curie"})

    pool = [doc("When did Curie win the Nobel Prize in physics?", "1903")]
    docs = [doc("When did Curie win the prize in chemistry?", "in 1911"), doc("Who won?", "Marie Curie")]
    task = Task("qa", "generation", docs, pool, metrics=("exact_match", "f1"))
    b = get_baseline("sliding-window")
    assert b.applies(task)
    m = evaluate_baseline(b, task)["metrics"]
    # max_len 1 (fitted): "1911" vs "in 1911" -> EM 0, F1 2/3; the second answer is not "Marie Curie"
    assert m["exact_match"] == 0.0
    assert m["f1"] == pytest.approx(
        (2 / 3 + squad_f1([predict_span(ctx, "Who won?", 1)], [["Marie Curie"]])) / 2
    )


def test_bow_qa_learns_question_words_and_majority_is_the_training_class() -> None:
    def doc(q: str, yes: bool) -> Doc:
        return Doc(q, ["no", "yes"], int(yes), fields={"question": q, "passage": "a passage", "title": "t"})

    pool = [doc(f"is it always {w}", True) for w in "abcdef"] + [
        doc(f"is it never {w}", False) for w in "abcd"
    ]
    docs = [doc("is it always g", True), doc("is it never g", False), doc("is it never h", False)]
    task = Task("bq", "multiple_choice", docs, pool)
    assert evaluate_baseline(get_baseline("bow-qa"), task)["metrics"]["acc"] == pytest.approx(1.0)
    # the majority of the training split is "yes" (6 of 10): right on 1 of the 3 test questions
    assert evaluate_baseline(get_baseline("majority"), task)["metrics"]["acc"] == pytest.approx(1 / 3)
    assert not get_baseline("bow-qa").applies(Task("x", "multiple_choice", [Doc("q", ["a", "b"], 0)], pool))
