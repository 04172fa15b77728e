"""Tests for lmforge.tokenizer.train: byte-level BPE training, save/load, special tokens, token bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from lmforge.errors import InputError
from lmforge.tokenizer.train import (
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    special_id,
    token_byte_lengths,
    train_bpe,
)


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


def test_trained_tokenizer_round_trips_arbitrary_unicode(tok_path):
    tok = load_tokenizer(tok_path)
    rng = random.Random(0)
    for _ in range(200):
        text = random_unicode(rng, rng.randint(0, 60))
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
        assert tok.token_to_id("<unk>") is None and None not in ids


def test_bpe_learned_merges_and_respects_vocab_size(corpus, tok_path):
    tok = load_tokenizer(tok_path)
    assert 259 < tok.get_vocab_size() <= 400
    text = corpus[0]
    assert len(tok.encode(text).ids) < len(text.encode())  # merges compress


def test_save_load_gives_identical_encodings_and_plain_tokenizers_loads_it(corpus, tok_path, tmp_path):
    trained = train_bpe(corpus, vocab_size=400)
    path = save_tokenizer(trained, tmp_path / "t.json")
    loaded = load_tokenizer(path)
    plain = Tokenizer.from_file(str(tok_path))
    for text in corpus[:50]:
        assert loaded.encode(text).ids == trained.encode(text).ids == plain.encode(text).ids
    assert not list(tmp_path.glob(".*tmp"))


def test_special_tokens_have_first_ids_and_are_never_split(tok_path):
    tok = load_tokenizer(tok_path)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert [special_id(tok, n) for n in ("bos", "eos", "<|pad|>")] == [0, 1, 2]
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tok.encode(token).ids == [token_id]
        ids = tok.encode(f"the{token}model ").ids
        assert ids.count(token_id) == 1 and len([i for i in ids if i < 3]) == 1
    with pytest.raises(ValueError, match="unknown special token"):
        special_id(tok, "cls")


def test_token_byte_lengths_sum_to_utf8_length(tok_path, corpus):
    tok = load_tokenizer(tok_path)
    lengths = token_byte_lengths(tok)
    assert lengths.dtype == np.int32 and lengths.shape == (tok.get_vocab_size(),)
    assert list(lengths[:3]) == [0, 0, 0] and (lengths[3:] >= 1).all()
    rng = random.Random(1)
    for text in corpus[:50] + [random_unicode(rng, 50) for _ in range(50)]:
        ids = tok.encode(text).ids
        assert int(lengths[ids].sum()) == len(text.encode())
    ids = tok.encode("<|bos|>abc").ids
    assert int(lengths[ids].sum()) == 3


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(InputError, match="tokenizer.json"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.json
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_vocab_size_below_bytes_plus_specials_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=258)
