"""Incremental detokenisation (``engine.TextState``): the text it releases, token by token, equals a full
decode of the ids, including UTF-8 characters split across byte-level tokens and invalid byte runs."""

from __future__ import annotations

import random

import pytest

from lmforge.inference.rows import TextState
from lmforge.tokenizer.train import train_bpe

TEXT = "naïve café — 10 € « déjà vu » 🙂 日本語 the cat sat on the mat " * 3


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT, "plain ascii words and more words " * 5] * 10, vocab_size=320)


def stream(tok, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    state = TextState(tok, stop)
    pieces = []
    for t in ids:
        text, stopped = state.add(t)
        pieces.append(text)
        if stopped:
            return pieces, True
    pieces.append(state.flush())
    return pieces, False


def byte_ids(tok, text: str) -> list[int]:
    """One id per UTF-8 byte (the byte-level alphabet), so every multi-byte character is split."""
    table = {ch: tok.token_to_id(ch) for ch in tok.get_vocab()}
    from tokenizers.pre_tokenizers import ByteLevel

    return [
        table[ch]
        for piece, _ in ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
        for ch in piece
    ]


def test_released_text_equals_the_full_decode(tok) -> None:
    ids = tok.encode(TEXT).ids
    split = byte_ids(tok, "é€🙂日")
    assert len(split) == 2 + 3 + 4 + 3  # every character spans several tokens
    rng = random.Random(0)
    random_ids = [rng.randrange(tok.get_vocab_size()) for _ in range(300)]  # invalid byte runs too
    for seq in (ids, split, split + ids, random_ids):
        pieces, _ = stream(tok, seq)
        assert "".join(pieces) == tok.decode(seq, skip_special_tokens=False)


def test_no_half_character_is_released(tok) -> None:
    pieces, _ = stream(tok, byte_ids(tok, "a€b🙂"))
    assert [p for p in pieces if p] == ["a", "€", "b", "🙂"]


def test_stop_string_cuts_at_its_first_occurrence(tok) -> None:
    ids = tok.encode(TEXT).ids
    full = tok.decode(ids, skip_special_tokens=False)
    for stop in ("café", "€ «", "🙂 日", "mat"):
        pieces, stopped = stream(tok, ids, (stop, "never there"))
        assert stopped and "".join(pieces) == full[: full.find(stop)]
