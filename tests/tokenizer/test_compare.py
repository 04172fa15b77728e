"""Tests for lmforge.tokenizer.compare: metrics against hand-computed cases, and the table."""

from __future__ import annotations

import pytest

from lmforge.tokenizer.compare import comparison_table, evaluate_tokenizer
from lmforge.tokenizer.train import TokenizerSpec, load_tokenizer, train_tokenizer


def test_word_level_metrics_by_hand():
    tok = train_tokenizer(["the cat sat"] * 3, TokenizerSpec("word", 100))
    assert tok.get_vocab_size() == 11 + 3  # special tokens + the, cat, sat
    m = evaluate_tokenizer(tok, ["the dog sat", "cat"])
    # tokens: the [UNK] sat | cat → 4 tokens, 1 unknown; 4 words, 1 with an unknown; 14 bytes
    assert m["bytes_per_token"] == 14 / 4
    assert m["unk_rate"] == 1 / 4 and m["oov_rate"] == 1 / 4
    assert m["vocab_used"] == 3 / 3
    assert m["lossless_docs"] == 1 / 2  # "the dog sat" loses "dog"; "cat" survives
    assert m["vocab_size"] == 14 and m["encode_mb_per_s"] > 0


def test_oov_counts_words_not_tokens():
    tok = train_tokenizer(["ab ab ab"] * 3, TokenizerSpec("wordpiece", 100))
    m = evaluate_tokenizer(tok, ["ab xyz", "ab\tab"])
    # "xyz" has characters outside the alphabet: one [UNK] word out of 4 words
    assert m["oov_rate"] == 1 / 4 and 0 < m["unk_rate"] < 1


def test_byte_level_bpe_has_no_unknowns_and_is_lossless(tok_path, corpus, unicode_text):
    import random

    rng = random.Random(0)
    held_out = corpus[-50:] + [unicode_text(rng, 40) for _ in range(20)] + ["literal <|end|> text"]
    m = evaluate_tokenizer(load_tokenizer(tok_path), held_out)
    assert m["unk_rate"] == 0 and m["oov_rate"] == 0 and m["lossless_docs"] == 1
    assert m["bytes_per_token"] > 1.5 and 0 < m["vocab_used"] <= 1


def test_comparison_table_and_empty_input(trained, corpus):
    results = {kind: evaluate_tokenizer(tok, corpus[:20]) for kind, tok in trained.items()}
    results["bpe"]["train_time_s"] = 0.5
    lines = comparison_table(results).splitlines()
    assert lines[0].startswith("| kind | vocab_size | bytes_per_token | unk_rate | oov_rate")
    assert lines[0].endswith("| train_time_s |") and len(lines) == 2 + 4
    assert lines[2].startswith("| bpe | ") and lines[-1].startswith("| word | ")
    assert results["word"]["bytes_per_token"] > results["bpe"]["bytes_per_token"]
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_tokenizer(trained["bpe"], ["", ""])
