"""Entity-level NER scores against hand-computed cases and against seqeval (when installed); the
WNUT-17 reader on ../shared/data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmforge.errors import InputError
from lmforge.eval.loaders import read_conll, wnut17
from lmforge.eval.metrics import bio_spans, entity_scores

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_bio_spans_both_schemes() -> None:
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "B-ORG", "I-PER"]
    assert bio_spans(tags) == [("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7), ("PER", 7, 8)]
    # iob2 (seqeval strict): an entity starts only at B-; stray I- tags are no entity
    assert bio_spans(tags, "iob2") == [("PER", 0, 2), ("LOC", 5, 6), ("ORG", 6, 7)]
    assert bio_spans(["O", "O"]) == [] and bio_spans([]) == []
    assert bio_spans(["B-X", "I-X", "I-X"]) == [("X", 0, 3)]  # an entity running to the end
    with pytest.raises(ValueError, match="'PER'"):
        bio_spans(["PER"])
    with pytest.raises(ValueError, match="scheme"):
        bio_spans(["O"], "bioes")


def test_entity_scores_hand_computed() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "B-LOC"]]
    # gold: PER(0,0-2) LOC(0,3-4) ORG(1,0-1) PER(1,2-3); predicted: PER(0,0-2) ORG(1,0-2) LOC(1,2-3)
    # correct: only PER(0,0-2) (ORG has a wrong right boundary: strict matching gives no credit)
    s = entity_scores(gold, pred)
    assert (s["n_gold"], s["n_predicted"], s["n_correct"]) == (4, 3, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 4)
    assert s["f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    assert s["per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert s["per_type"]["ORG"]["f1"] == 0.0 and s["per_type"]["LOC"]["support"] == 1
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    perfect = entity_scores(gold, gold)
    assert perfect["f1"] == 1.0 and perfect["macro_f1"] == 1.0
    nothing = entity_scores(gold, [["O"] * 4, ["O"] * 3])
    assert nothing["precision"] == 0.0 and nothing["recall"] == 0.0 and nothing["f1"] == 0.0
    with pytest.raises(ValueError, match="sentence 1"):
        entity_scores(gold, [pred[0], ["O"]])


def test_entity_scores_equal_seqeval() -> None:
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval is not installed")
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sent] for sent in gold]
    ours = entity_scores(gold, pred)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred))
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
    assert ours["macro_f1"] == pytest.approx(seqeval.f1_score(gold, pred, average="macro"))
    strict = entity_scores(gold, pred, "iob2")
    assert strict["f1"] == pytest.approx(seqeval.f1_score(gold, pred, mode="strict", scheme=IOB2))
    assert strict["precision"] == pytest.approx(
        seqeval.precision_score(gold, pred, mode="strict", scheme=IOB2)
    )


def test_read_conll(tmp_path: Path) -> None:
    (tmp_path / "a.conll").write_text("Paris\tB-location\nis\tO\n\n\nBob\tB-person\n")
    assert read_conll(tmp_path / "a.conll") == [
        (["Paris", "is"], ["B-location", "O"]),
        (["Bob"], ["B-person"]),
    ]
    (tmp_path / "b.conll").write_text("Paris B-location\n")
    with pytest.raises(InputError, match="b.conll:1"):
        read_conll(tmp_path / "b.conll")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)")
def test_wnut17_splits() -> None:
    sizes = {split: len(wnut17(SHARED, split)) for split in ("train", "dev", "test")}
    assert sizes == {"train": 3394, "dev": 1009, "test": 1287}  # the official sentence counts
    train = wnut17(SHARED, "train")
    types = {t[2:] for _, tags in train for t in tags if t != "O"}
    assert types == {"corporation", "creative-work", "group", "location", "person", "product"}
    assert sum(len(bio_spans(tags)) for _, tags in train) == 1975  # the B- tags of the training file
