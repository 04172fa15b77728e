"""Tests for lmforge.tokenizer.encoders: tiktoken built from our BPE gives tokenizers' ids; backend choice."""

from __future__ import annotations

import logging
import random

import pytest

from lmforge.tokenizer.encoders import DocEncoder, choose_backend, tiktoken_encoding, tiktoken_pattern
from lmforge.tokenizer.train import PRE_TOKENIZER_PATTERNS, TokenizerSpec, load_tokenizer, train_tokenizer

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is optional (the bench extra)")


@pytest.mark.parametrize("pre_tokenizer", ["", "gpt4"])
def test_tiktoken_encodes_exactly_like_tokenizers(pre_tokenizer, corpus, unicode_text):
    tok = train_tokenizer(corpus, TokenizerSpec("bpe", 500, pre_tokenizer=pre_tokenizer))
    assert tiktoken_pattern(tok) == PRE_TOKENIZER_PATTERNS[pre_tokenizer or "gpt2"]
    rng = random.Random(0)
    texts = corpus + [unicode_text(rng, rng.randint(0, 80)) for _ in range(300)]
    texts += ["before <|end|> after <|bos|>", "   spaces\n\n\ttabs  ", ""]
    fast, reference = DocEncoder(tok, "tiktoken"), DocEncoder(tok, "tokenizers")
    assert fast(texts) == reference(texts)
    assert tok.encode("<|end|>").ids == [6], "encoding data leaves the tokenizer's setting as it was"
    enc = tiktoken_encoding(tok)
    assert enc.decode(fast(["naïve café 🚀"])[0]) == "naïve café 🚀"


def test_auto_picks_tiktoken_for_bpe_and_tokenizers_otherwise(tok_path, trained, corpus):
    tok = load_tokenizer(tok_path)
    assert choose_backend(tok, "auto", corpus[:20]) == "tiktoken"
    assert choose_backend(tok, "tokenizers", corpus[:20]) == "tokenizers"
    for kind in ("wordpiece", "unigram", "word"):
        assert choose_backend(trained[kind], "auto", corpus[:20]) == "tokenizers"
        with pytest.raises(ValueError, match="not a byte-level BPE"):
            choose_backend(trained[kind], "tiktoken", corpus[:20])
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend(tok, "fast", [])


def test_auto_falls_back_when_tiktoken_disagrees(tok_path, corpus, monkeypatch, caplog):
    tok = load_tokenizer(tok_path)
    monkeypatch.setattr(logging.getLogger("lmforge"), "propagate", True)  # the CLI may have turned it off
    monkeypatch.setattr(
        DocEncoder, "__call__", lambda self, texts: [[self.backend == "tiktoken"]] * len(texts)
    )
    assert choose_backend(tok, "auto", corpus[:5]) == "tokenizers"
    assert "disagree" in caplog.text
