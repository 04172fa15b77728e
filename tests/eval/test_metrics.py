"""Generation metrics against hand-computed cases, and BLEU/chrF equal to sacrebleu's corpus scores."""

from __future__ import annotations

import pytest
import sacrebleu

from lmforge.eval.metrics import (
    corpus_bleu,
    corpus_chrf,
    exact_match,
    normalize_answer,
    rouge,
    score_generations,
    squad_f1,
)


def test_normalize_and_exact_match() -> None:
    assert normalize_answer("  The Cat,  sat!") == "cat sat"
    assert exact_match(["The cat!", "dog"], [["cat"], ["a cat", "doggo"]]) == 0.5


def test_squad_f1_hand_computed() -> None:
    # pred {cat, sat} vs ref {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8; best over references
    assert squad_f1(["the cat sat"], [["a cat sat down"]]) == pytest.approx(0.8)
    assert squad_f1(["the cat sat"], [["dog", "cat sat"]]) == pytest.approx(1.0)
    assert squad_f1(["x"], [["y"]]) == 0.0
    # both normalise to nothing (a reference that is only "." or "the"): 0, as the v1.1 script gives
    assert squad_f1(["the"], [["."]]) == 0.0


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores() -> None:
    preds = ["the cat is on the mat", "there is a dog in the garden today", "hello world"]
    refs = [["the cat sat on the mat"], ["a dog is in the garden"], ["hello there world"]]
    assert corpus_bleu(preds, refs) == pytest.approx(
        sacrebleu.corpus_bleu(preds, [[r[0] for r in refs]]).score
    )
    assert corpus_chrf(preds, refs) == pytest.approx(
        sacrebleu.corpus_chrf(preds, [[r[0] for r in refs]]).score
    )
    assert corpus_bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(100.0)


def test_rouge_hand_computed() -> None:
    # pred 3 unigrams all in the 6-unigram ref: P = 1, R = 1/2, F = 2/3; bigrams 2 of 5: F = 4/7
    r = rouge(["the cat sat"], [["the cat sat on the mat"]])
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rouge2"] == pytest.approx(4 / 7)
    assert r["rougeL"] == pytest.approx(2 / 3)


def test_score_generations_and_bad_input() -> None:
    out = score_generations(["cat"], [["cat"]], ["exact_match", "f1", "rouge"])
    assert out["exact_match"] == out["f1"] == out["rouge1"] == 1.0
    with pytest.raises(ValueError, match="valid"):
        score_generations(["cat"], [["cat"]], ["nope"])
    with pytest.raises(ValueError, match="differ in length"):
        exact_match(["a"], [])
    with pytest.raises(ValueError, match="references"):
        exact_match(["a"], ["a"])
