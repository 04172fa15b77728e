"""Tests for lmforge.data.decontam: planted eval passages are caught, unrelated text is kept,
flag mode marks, file formats and errors, and (where present) a real ARC question is caught."""

from __future__ import annotations

import bz2
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import from_dict
from lmforge.data.decontam import DecontamConfig, Decontaminator, build, eval_texts, ngram_hashes, words
from lmforge.data.document import Document
from lmforge.errors import ConfigError, InputError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

PASSAGE = (
    "The mitochondria convert nutrients into adenosine triphosphate through a chain of reactions "
    "that take place across the inner membrane of the organelle."
)
SHORT_QUESTION = "Which gas do green plants absorb from the air?"  # 9 words: matched whole
FILLER = (
    "Gardening is a relaxing hobby for many people. Tomatoes need plenty of sun and regular water, "
    "while ferns prefer shade. Compost improves the soil and reduces waste from the kitchen. "
)


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.jsonl.gz"
    records = [
        {"id": 1, "passage": PASSAGE, "answer": "yes"},
        {
            "id": 2,
            "question": {"stem": SHORT_QUESTION, "choices": [{"text": "carbon dioxide", "label": "A"}]},
        },
        {"id": 3, "meta": {"source": "a string outside the text fields that is long enough to be an n-gram"}},
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def _docs() -> list[Document]:
    planted = FILLER + PASSAGE.upper().replace(",", " ;") + " " + FILLER  # case and punctuation differ
    return [
        Document("planted", planted, {"source": "s"}),
        Document("clean", FILLER * 3, {"source": "s"}),
        Document("short_q", FILLER + "Quiz: which gas do green plants absorb from the air? " + FILLER, {}),
        Document(
            "outside", FILLER + "a string outside the text fields that is long enough to be an n-gram", {}
        ),
        Document("choice", FILLER + "They breathe out carbon dioxide.", {}),
    ]


def test_planted_passage_is_dropped_and_unrelated_docs_kept(eval_file):
    dropped = []
    step = build(DecontamConfig(eval_files=[str(eval_file)]))
    kept = list(step(_docs(), lambda d, r: dropped.append((d.id, r))))
    assert [d.id for d in kept] == ["clean", "outside", "choice"]
    assert dropped == [("planted", "contaminated"), ("short_q", "contaminated")]
    assert step.counts() == {"decontam_checked": 5, "contaminated_docs": 2}


def test_flag_mode_keeps_and_marks(eval_file):
    step = build(DecontamConfig(eval_files=[str(eval_file)], action="flag"))
    kept = list(step(_docs(), lambda d, r: pytest.fail("flag mode drops nothing")))
    assert [d.metadata.get("contaminated", False) for d in kept] == [True, False, True, False, False]
    assert kept[0].metadata["source"] == "s"
    assert step.counts()["contaminated_docs"] == 2


def test_prepared_set_pickles_compactly(eval_file):
    step = build(DecontamConfig(eval_files=[str(eval_file)])).prepare()
    assert step.table.dtype == np.uint64 and np.all(np.diff(step.table.astype(np.float64)) >= 0)
    clone = pickle.loads(pickle.dumps(step))
    assert np.array_equal(clone.table, step.table) and clone.short_lengths == (9,)
    assert len(pickle.dumps(step)) < 2_000
    assert clone.is_contaminated(PASSAGE) and not clone.is_contaminated(FILLER)


def test_ngram_hashes_are_order_sensitive_and_sized():
    wh = np.arange(1, 21, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    assert len(ngram_hashes(wh, 13)) == 8 and len(ngram_hashes(wh[:5], 13)) == 0
    assert ngram_hashes(wh[:13], 13)[0] != ngram_hashes(wh[:13][::-1].copy(), 13)[0]
    assert words("Don't STOP, believing!") == ["don", "t", "stop", "believing"]


def test_txt_and_bz2_and_json_inputs(tmp_path):
    txt = tmp_path / "eval.txt.bz2"
    txt.write_bytes(bz2.compress(("line one is short\n" + PASSAGE + "\n").encode()))
    assert PASSAGE in list(eval_texts(txt, ["text"]))
    doc = tmp_path / "eval.json"
    doc.write_text(json.dumps({"data": [{"paragraphs": [{"context": PASSAGE}]}]}), encoding="utf-8")
    assert list(eval_texts(doc, ["context"])) == [PASSAGE]
    step = build(DecontamConfig(eval_files=[str(txt), str(doc)]))
    assert step.is_contaminated("intro " + PASSAGE) and not step.is_contaminated(FILLER)


def test_bad_inputs_fail_before_work(tmp_path):
    with pytest.raises(InputError, match="no such eval file"):
        build(DecontamConfig(eval_files=[str(tmp_path / "missing.jsonl")]))
    odd = tmp_path / "eval.csv"
    odd.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported"):
        build(DecontamConfig(eval_files=[str(odd)]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(InputError, match="broken.jsonl:2"):
        build(DecontamConfig(eval_files=[str(broken)])).prepare()
    assert build(DecontamConfig()) is None
    for field, value in [("n", 0), ("min_words", 20), ("action", "delete")]:
        with pytest.raises(ConfigError) as exc:
            from_dict(DecontamConfig, {field: value})
        assert exc.value.key == field


@pytest.mark.skipif(not (SHARED / "arc").is_dir(), reason="../shared/data/arc not present")
def test_real_arc_question_is_caught():
    path = SHARED / "arc" / "ARC-Easy-Dev.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:200]]
    stems = [r["question"]["stem"] for r in records]
    long_stem = next(s for s in stems if len(words(s)) >= 13)
    short_stem = next(s for s in stems if 8 <= len(words(s)) < 13)
    step = Decontaminator(DecontamConfig(eval_files=[str(path)]))
    assert step.is_contaminated(FILLER + long_stem + " " + FILLER)
    assert step.is_contaminated(FILLER + short_stem + " " + FILLER)
    assert not step.is_contaminated(FILLER * 4)
