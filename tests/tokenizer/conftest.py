"""Shared fixtures for tokenizer tests: a small deterministic corpus and a tokenizer trained on it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmforge.tokenizer.train import save_tokenizer, train_bpe

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


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus(600)


@pytest.fixture(scope="session")
def tok_path(corpus, tmp_path_factory) -> Path:
    tok = train_bpe(corpus, vocab_size=400)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok"))
