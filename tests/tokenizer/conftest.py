"""Shared fixtures for tokenizer tests: a small deterministic corpus, tokenizers trained on it, and a
random-Unicode generator (hypothesis is not a dependency)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmforge.tokenizer.train import KINDS, TokenizerSpec, save_tokenizer, train_bpe, train_tokenizer

WORDS = (
    "the model reads tokens and predicts the next one while the optimiser updates every weight; "
    "données naïve café Straße 東京 日本語 привет мир ☕ 🚀 def return class import print(x) 42 3.14"
).split()


def make_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-text documents of varied length, with newlines and Unicode."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 6))
        ]
        docs.append("\n".join(lines))
    return docs


def random_unicode(rng: random.Random, n: int) -> str:
    """Arbitrary text: ASCII, whitespace runs, controls, accents, CJK, emoji, astral and private-use code points."""
    pools = [
        "abc XYZ 019 ,.;!?'\"",
        " \t\n\r\x00\x7f",
        "\u0301\u00e9\u00df\u0131\u03a3\u0416",
        "東京日本語한국어",
        "☕🚀👩‍👩‍👧\ufe0f",
    ]
    out = []
    for _ in range(n):
        pool = rng.randrange(6)
        if pool < 5:
            out.append(rng.choice(pools[pool]))
        else:  # any scalar value outside the surrogates
            cp = rng.randrange(0x110000 - 0x800)
            out.append(chr(cp + 0x800 if cp >= 0xD800 else cp))
    return "".join(out)


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus(600)


@pytest.fixture(scope="session")
def tok_path(corpus, tmp_path_factory) -> Path:
    tok = train_bpe(corpus, vocab_size=400)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def trained(corpus):
    """One tokenizer of every kind at vocab_size 300, trained on the corpus."""
    return {kind: train_tokenizer(corpus, TokenizerSpec(kind=kind, vocab_size=300)) for kind in KINDS}


@pytest.fixture(scope="session")
def unicode_text():
    """``unicode_text(rng, n)``: n random characters (see ``random_unicode``)."""
    return random_unicode
