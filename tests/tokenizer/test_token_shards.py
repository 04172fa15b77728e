"""Tests for lmforge.tokenizer.shards: binary token shards, index.json, workers, memory-mapped reading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.errors import InputError
from lmforge.tokenizer.shards import (
    TokenStream,
    encode_to_shards,
    open_shards,
    open_tokens,
    read_index,
    token_dtype,
)
from lmforge.tokenizer.train import load_tokenizer


def expected_stream(tok, texts: list[str]) -> list[int]:
    out = []
    for text in texts:
        out += [0] + tok.encode(text, add_special_tokens=False).ids
    return out


def test_single_shard_index_and_contents(tok_path, corpus, tmp_path):
    tok = load_tokenizer(tok_path)
    texts = corpus[:100]
    seen = []
    index = encode_to_shards(texts, tok_path, tmp_path / "tok", workers=1, batch_docs=7, progress=seen.append)
    stream = expected_stream(tok, texts)
    assert index["dtype"] == "uint16" and index["vocab_size"] == tok.get_vocab_size()
    assert (index["tokens"], index["docs"], index["bytes"]) == (
        len(stream),
        100,
        sum(len(t.encode()) for t in texts),
    )
    assert index["shards"] == [
        {"file": "shard_00000.bin", "tokens": len(stream), "bytes": index["bytes"], "docs": 100}
    ]
    assert json.loads((tmp_path / "tok" / "index.json").read_text()) == index == read_index(tmp_path / "tok")
    assert (tmp_path / "tok" / "shard_00000.bin").stat().st_size == 2 * len(stream)
    tokens = open_tokens(tmp_path / "tok")
    assert tokens.dtype == np.uint16 and tokens.tolist() == stream
    assert sum(seen) == 100 and len(seen) == 15
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["index.json", "shard_00000.bin"]


def test_shards_split_between_documents_and_multi_worker_output_is_identical(tok_path, corpus, tmp_path):
    tok = load_tokenizer(tok_path)
    texts = corpus[:300]
    one = encode_to_shards(texts, tok_path, tmp_path / "one", workers=1, batch_docs=50, tokens_per_shard=1000)
    two = encode_to_shards(
        iter(texts), tok_path, tmp_path / "two", workers=2, batch_docs=13, tokens_per_shard=1000
    )
    assert one == two and len(one["shards"]) > 3
    for shard in one["shards"]:
        a = (tmp_path / "one" / shard["file"]).read_bytes()
        assert a == (tmp_path / "two" / shard["file"]).read_bytes()
        assert shard["tokens"] <= 1000 and a[:2] == b"\x00\x00"  # each shard starts with <|bos|> (id 0)
    assert sum(s["docs"] for s in one["shards"]) == 300
    shards = open_shards(tmp_path / "one")
    assert sum(int((s == 0).sum()) for s in shards) == 300
    assert np.concatenate(shards).tolist() == expected_stream(tok, texts)


def test_document_longer_than_a_shard_gets_its_own(tok_path, tmp_path):
    texts = ["short", "long " * 200, "tail"]
    index = encode_to_shards(texts, tok_path, tmp_path / "t", workers=1, tokens_per_shard=50)
    assert [s["docs"] for s in index["shards"]] == [1, 1, 1]
    assert index["shards"][1]["tokens"] > 50


def test_token_stream_reads_across_shard_boundaries(tok_path, corpus, tmp_path):
    encode_to_shards(corpus[:80], tok_path, tmp_path / "t", workers=1, tokens_per_shard=300)
    flat = open_tokens(tmp_path / "t")
    stream = TokenStream(tmp_path / "t")
    assert len(stream) == len(flat) and len(stream.shards) > 2
    for start in range(0, len(flat) - 400, 37):
        assert stream.read(start, start + 400).tolist() == flat[start : start + 400].tolist()
    with pytest.raises(IndexError):
        stream.read(0, len(flat) + 1)


def test_rerun_replaces_stale_shards(tok_path, corpus, tmp_path):
    encode_to_shards(corpus[:100], tok_path, tmp_path / "t", workers=1, tokens_per_shard=200)
    index = encode_to_shards(corpus[:3], tok_path, tmp_path / "t", workers=1, tokens_per_shard=200)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["index.json", "shard_00000.bin"]
    assert read_index(tmp_path / "t") == index and index["docs"] == 3


def test_empty_input_writes_one_empty_shard(tok_path, tmp_path):
    index = encode_to_shards([], tok_path, tmp_path / "e", workers=1)
    assert (index["tokens"], index["docs"], len(index["shards"])) == (0, 0, 1)
    assert len(open_tokens(tmp_path / "e")) == 0


def test_uint32_when_vocabulary_does_not_fit_uint16():
    assert token_dtype(65_535) == np.uint16 and token_dtype(65_536) == np.uint32


def test_bad_directories_are_reported(tok_path, corpus, tmp_path):
    with pytest.raises(InputError, match="no token index"):
        read_index(tmp_path)
    encode_to_shards(corpus[:5], tok_path, tmp_path / "t", workers=1)
    with (tmp_path / "t" / "shard_00000.bin").open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(InputError, match="shard_00000.bin"):
        open_tokens(tmp_path / "t")
    with pytest.raises(InputError, match="no such tokenizer file"):
        encode_to_shards(["x"], tmp_path / "none.json", tmp_path / "u", workers=1)


def test_special_token_text_in_documents_is_plain_text(tok_path, tmp_path):
    """A document that contains the literal string "<|eos|>" must not inject the control token."""
    tok = load_tokenizer(tok_path)
    eos = tok.token_to_id("<|eos|>")
    index = encode_to_shards(["before <|eos|> after", "plain"], tok_path, tmp_path / "t", workers=1)
    ids = open_tokens(tmp_path / "t")
    assert eos not in set(ids.tolist())
    assert list(ids).count(0) == 2 and index["docs"] == 2
    assert tok.encode("<|eos|>").ids == [eos], "the caller's tokenizer is left as it was"
