"""Classification metrics against hand-computed cases, and the bag-of-words baseline."""

from __future__ import annotations

import random

import pytest

from lmforge.eval.classification import (
    bow_baseline,
    classification_metrics,
    confusion_table,
    flat_metrics,
)


def test_metrics_match_a_hand_computed_case():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    r = classification_metrics(y_true, y_pred)
    assert r["labels"] == ["a", "b", "c"]
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["accuracy"] == pytest.approx(4 / 6)
    # a: P 2/2, R 2/3, F1 0.8; b: P 1/2, R 1/2, F1 0.5; c: P 1/2, R 1/1, F1 2/3
    assert r["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert r["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    flat = flat_metrics(r)
    assert flat["precision_b"] == 0.5 and flat["recall_c"] == 1.0 and "macro_f1" in flat
    assert confusion_table(r)["rows"][0] == ["a", 2, 1, 0]


def test_never_predicted_class_has_zero_precision():
    r = classification_metrics(["x", "y"], ["x", "x"], labels=["x", "y", "z"])
    assert r["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["z"]["support"] == 0 and r["macro_f1"] == pytest.approx((2 / 3) / 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="length"):
        classification_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="not among"):
        classification_metrics(["a"], ["q"], labels=["a"])
    with pytest.raises(ValueError):
        classification_metrics([], [])


def test_bow_baseline_learns_word_evidence():
    rng = random.Random(0)

    def make(n):
        rows = []
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            word = rng.choice(["good", "great"] if label == "pos" else ["bad", "awful"])
            rows.append((f"the film was {word} {rng.choice(['really', 'very', 'quite'])}", label))
        return rows

    train, dev = make(60), make(20)
    r = bow_baseline([t for t, _ in train], [y for _, y in train], [t for t, _ in dev], [y for _, y in dev])
    assert r["accuracy"] == 1.0 and r["labels"] == ["neg", "pos"]
    with pytest.raises(ValueError, match="two classes"):
        bow_baseline(["a"], ["x"], ["a"], ["x"])
