"""The classic NER baselines (``eval.classic.ner``): features, the most-frequent-tag lookup and the CRF on
a toy corpus; the lookup's documented WNUT-17 figure (skipped without ../shared/data)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmforge.eval.classic.ner import crf_tagger, most_frequent_tag, token_features, word_shape
from lmforge.eval.metrics import entity_scores

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_word_shape_and_features() -> None:
    assert word_shape("iPhone7") == "xXxd"
    assert word_shape("McDonald's") == "XxXx'x"
    assert word_shape("2017") == "d" and word_shape("USA") == "X"
    f = token_features(["met", "Alice", "@bob"], 1)
    assert f["lower"] == "alice" and f["istitle"] and not f["isupper"]
    assert f["prefix2"] == "al" and f["suffix3"] == "ice"
    assert f["-1:lower"] == "met" and f["+1:lower"] == "@bob" and f["-2:pad"] and f["+2:pad"]
    g = token_features(["met", "Alice", "@bob"], 2)
    assert g["mention"] and not g["hashtag"] and g["-1:istitle"]
    assert token_features(["see", "https://t.co/x"], 1)["url"]


def test_most_frequent_tag() -> None:
    train = [
        (["Paris", "is", "big"], ["B-location", "O", "O"]),
        (["paris", "hilton"], ["B-person", "I-person"]),
        (["PARIS", "again"], ["B-location", "O"]),
    ]
    # "paris" was a location twice and a person once (case folded); "rome" never seen → O
    assert most_frequent_tag(train, [["paris", "hilton", "rome"]]) == [["B-location", "I-person", "O"]]
    assert most_frequent_tag(train, []) == []


NAMES = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy".split()
WORDS = "we met saw with and today then later the a".split()


def toy(names: list[str], n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences holding one capitalised name (B-person) after 'met' or 'with'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        left = [rng.choice(WORDS) for _ in range(rng.randint(0, 3))] + [rng.choice(["met", "with"])]
        right = [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
        out.append(
            ([*left, rng.choice(names), *right], ["O"] * len(left) + ["B-person"] + ["O"] * len(right))
        )
    return out


def test_crf_tags_names_it_never_saw() -> None:
    """Trained on seven names, tested on seven others: the lookup finds none, the CRF (shape,
    capitalisation and the previous word) finds them all."""
    pytest.importorskip("sklearn_crfsuite", reason="sklearn-crfsuite is not installed")
    train, test = toy(NAMES[:7], 120, 0), toy(NAMES[7:], 40, 1)
    gold, words = [t for _, t in test], [w for w, _ in test]
    assert entity_scores(gold, most_frequent_tag(train, words))["f1"] == 0.0
    assert entity_scores(gold, crf_tagger(train, words, max_iterations=50))["f1"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        crf_tagger([], words)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)")
def test_lookup_on_wnut17_matches_the_documented_figure() -> None:
    from lmforge.eval.loaders import wnut17

    train, test = wnut17(SHARED, "train"), wnut17(SHARED, "test")
    s = entity_scores([t for _, t in test], most_frequent_tag(train, [w for w, _ in test]))
    assert (s["n_correct"], s["n_gold"]) == (61, 1079)  # docs/applications.md, NER section
    assert s["f1"] == pytest.approx(0.090, abs=5e-4)
