"""Tests for lmforge.tokenizer.train: the four kinds, save/load/metadata, special tokens, token bytes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from lmforge.errors import InputError
from lmforge.tokenizer.train import (
    CHAT_TOKENS,
    ENCODER_TOKENS,
    KINDS,
    SPECIAL_TOKENS,
    UNK_TOKEN,
    TextSample,
    TokenizerSpec,
    describe_tokenizer,
    load_meta,
    load_tokenizer,
    save_tokenizer,
    spec_meta,
    special_id,
    token_byte_lengths,
    tokenizer_kind,
    train_bpe,
    train_tokenizer,
    unk_id,
)

ALL_SPECIALS = SPECIAL_TOKENS + CHAT_TOKENS + ENCODER_TOKENS


def random_bytes_text(rng: random.Random, n: int) -> str:
    """Random bytes decoded as UTF-8 with replacement: valid text, never a lone surrogate."""
    return bytes(rng.randrange(256) for _ in range(n)).decode("utf-8", errors="replace")


def test_bpe_round_trips_arbitrary_unicode_and_random_bytes(tok_path, unicode_text):
    tok = load_tokenizer(tok_path)
    rng = random.Random(0)
    texts = [unicode_text(rng, rng.randint(0, 60)) for _ in range(200)]
    texts += [random_bytes_text(rng, rng.randint(0, 80)) for _ in range(200)]
    for text in texts:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
        assert tok.token_to_id(UNK_TOKEN) is None and None not in ids


def test_bpe_learned_merges_and_respects_vocab_size(corpus, tok_path):
    tok = load_tokenizer(tok_path)
    assert 256 + len(ALL_SPECIALS) < tok.get_vocab_size() <= 400
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t_meta.json"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_saves_and_reloads_identically(kind, trained, corpus, tmp_path, unicode_text):
    tok = trained[kind]
    sample = TextSample(corpus, max_bytes=0)
    list(sample)
    spec = TokenizerSpec(kind=kind, vocab_size=300)
    path = save_tokenizer(tok, tmp_path, meta=spec_meta(spec, sample))
    assert path == tmp_path / "tokenizer.json"
    loaded, plain = load_tokenizer(tmp_path), Tokenizer.from_file(str(path))
    assert loaded.to_str() == plain.to_str()
    original, reloaded = json.loads(tok.to_str()), json.loads(loaded.to_str())
    if kind == "unigram":  # scores are floats: JSON parsing may move the last bit
        pieces, scores = zip(*original["model"].pop("vocab"))
        assert [p for p, _ in reloaded["model"]["vocab"]] == list(pieces)
        assert np.allclose([s for _, s in reloaded["model"].pop("vocab")], scores, rtol=1e-12, atol=0)
    assert reloaded == original
    rng = random.Random(2)
    for text in corpus[:30] + [unicode_text(rng, 30) for _ in range(30)]:
        assert loaded.encode(text).ids == tok.encode(text).ids == plain.encode(text).ids
    meta = json.loads((tmp_path / "tokenizer_meta.json").read_text())
    assert meta == load_meta(tmp_path)
    assert (meta["format"], meta["kind"], meta["vocab_size"]) == (1, kind, tok.get_vocab_size())
    assert meta["training_sample_bytes"] == sum(len(t.encode()) for t in corpus)
    assert meta["training_sample_docs"] == len(corpus)
    assert meta["spec"]["kind"] == kind and tokenizer_kind(loaded) == kind
    assert len(meta["special_tokens"]) < tok.get_vocab_size() <= 300


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_have_fixed_ids_and_are_never_split(kind, trained):
    tok = trained[kind]
    expected = ALL_SPECIALS + ([UNK_TOKEN] if kind != "bpe" else [])
    assert [tok.token_to_id(t) for t in expected] == list(range(len(expected)))
    assert describe_tokenizer(tok)["special_tokens"] == {t: i for i, t in enumerate(expected)}
    for token_id, token in enumerate(expected):
        assert tok.encode(token).ids == [token_id]
        ids = tok.encode(f"the{token}model predicts").ids
        assert ids.count(token_id) == 1 and len([i for i in ids if i < len(expected)]) == 1
    assert (unk_id(tok) is None) == (kind == "bpe")


def test_special_id_full_and_short_names(trained):
    tok = trained["wordpiece"]
    assert [special_id(tok, n) for n in ("bos", "eos", "<|pad|>", "user", "end", "mask", "[CLS]")] == [
        0,
        1,
        2,
        4,
        6,
        7,
        8,
    ]
    assert special_id(tok, "unk") == 10
    with pytest.raises(ValueError, match="unknown special token"):
        special_id(tok, "nope")
    with pytest.raises(InputError, match="lacks special token"):
        special_id(trained["bpe"], "unk")


def test_word_level_baseline_maps_unseen_words_to_unk(trained):
    tok = trained["word"]
    unk = tok.token_to_id(UNK_TOKEN)
    ids = tok.encode("the model zyzzyva").ids
    assert ids[:2] != [unk, unk] and ids[-1] == unk
    assert unk not in train_bpe(["the model"], vocab_size=300).encode("zyzzyva").ids


def test_extra_special_tokens_and_pre_tokenizer_presets(corpus, unicode_text):
    tok = train_tokenizer(
        corpus, TokenizerSpec("bpe", 400, extra_special_tokens=("<|tool|>",), pre_tokenizer="gpt4")
    )
    assert [tok.token_to_id(t) for t in ("<|bos|>", "<|tool|>")] == [0, 3]
    assert tok.token_to_id("<|user|>") is None
    rng = random.Random(3)
    for _ in range(100):
        text = unicode_text(rng, 40)
        assert tok.decode(tok.encode(text).ids) == text
    assert "Split" in tok.to_str() and "[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+" in tok.to_str()
    word = train_tokenizer(corpus, TokenizerSpec("word", 300, pre_tokenizer=r"\s+|\S+"))
    assert word.decode(word.encode("the model reads\n").ids) == "the model reads\n"  # the regex keeps spaces


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (TokenizerSpec("bpe", 265), "vocab_size must be >= 266"),
        (TokenizerSpec("word", 11), "vocab_size must be >= 12"),
        (TokenizerSpec("sentencepiece", 500), "kind must be one of"),
        (TokenizerSpec("bpe", 500, min_frequency=0), "min_frequency"),
        (TokenizerSpec("bpe", 500, extra_special_tokens=("<|bos|>",)), "extra_special_tokens"),
        (TokenizerSpec("bpe", 500, extra_special_tokens=("a", "a")), "extra_special_tokens"),
        (TokenizerSpec("bpe", 500, pre_tokenizer="(unclosed"), "pre_tokenizer"),
    ],
)
def test_invalid_specs_are_rejected(spec, match):
    with pytest.raises(ValueError, match=match):
        train_tokenizer(["abc"], spec)


def test_train_bpe_keeps_its_signature_and_minimum():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=258)
    tok = train_bpe(["abc abc"], vocab_size=259, extra_special_tokens=())
    assert tok.get_vocab_size() == 259 and tok.token_to_id("<|user|>") is None


def test_bpe_token_byte_lengths_sum_to_utf8_length(tok_path, corpus, unicode_text):
    tok = load_tokenizer(tok_path)
    lengths = token_byte_lengths(tok)
    n_special = len(ALL_SPECIALS)
    assert lengths.dtype == np.int32 and lengths.shape == (tok.get_vocab_size(),)
    assert not lengths[:n_special].any() and (lengths[n_special:] >= 1).all()
    rng = random.Random(1)
    for text in corpus[:50] + [unicode_text(rng, 50) for _ in range(50)]:
        ids = tok.encode(text).ids
        assert int(lengths[ids].sum()) == len(text.encode())
    ids = tok.encode("<|bos|>abc<|user|>").ids
    assert int(lengths[ids].sum()) == 3


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "word"])
def test_token_byte_lengths_estimate_other_kinds(kind, trained, corpus):
    tok = trained[kind]
    lengths = token_byte_lengths(tok)
    assert not lengths[: len(ALL_SPECIALS) + 1].any()  # special tokens and [UNK] count 0
    true_bytes = sum(len(t.encode()) for t in corpus[:100])
    estimate = sum(int(lengths[tok.encode(t).ids].sum()) for t in corpus[:100])
    assert 0.8 < estimate / true_bytes < 1.2  # an estimate: whitespace and unknown characters are lost


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(InputError, match="tokenizer.json"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.json
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_metadata_is_derived_without_file_and_checked_with_one(tok_path, tmp_path):
    tok = load_tokenizer(tok_path)
    lone = tmp_path / "ckpt"
    lone.mkdir()
    (lone / "tokenizer.json").write_text(tok.to_str())  # a checkpoint copies only tokenizer.json
    meta = load_meta(lone)
    assert meta["kind"] == "bpe" and meta["unk_token"] is None and meta["special_tokens"]["<|end|>"] == 6
    (lone / "tokenizer_meta.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(InputError, match="format 99"):
        load_meta(lone)
