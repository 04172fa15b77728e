"""Tests for lmforge.tokenizer.shards: binary token shards, index.json, workers, memory-mapped reading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.errors import InputError
from lmforge.tokenizer.shards import (
    TokenStream,
    document_starts,
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
    assert (index["bos_id"], index["eos_id"]) == (0, None)
    assert (index["tokens"], index["docs"], index["bytes"]) == (
        len(stream),
        100,
        sum(len(t.encode()) for t in texts),
    )
    assert index["shards"] == [
        {
            "file": "shard_00000.bin",
            "doc_index": "shard_00000.idx",
            "tokens": len(stream),
            "bytes": index["bytes"],
            "docs": 100,
        }
    ]
    assert json.loads((tmp_path / "tok" / "index.json").read_text()) == index == read_index(tmp_path / "tok")
    assert (tmp_path / "tok" / "shard_00000.bin").stat().st_size == 2 * len(stream)
    tokens = open_tokens(tmp_path / "tok")
    assert tokens.dtype == np.uint16 and tokens.tolist() == stream
    assert sum(seen) == 100 and len(seen) == 15
    names = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert names == ["index.json", "shard_00000.bin", "shard_00000.idx"]
    starts = np.cumsum([0] + [len(tok.encode(t).ids) + 1 for t in texts[:-1]])
    assert document_starts(tmp_path / "tok").tolist() == starts.tolist()


def test_shards_are_identical_across_workers_and_backends(tok_path, corpus, tmp_path):
    """workers=1 tokenizers, workers=2 tiktoken (auto), workers=2 tokenizers: the same bytes."""
    tok = load_tokenizer(tok_path)
    texts = corpus[:300]
    one = encode_to_shards(
        texts,
        tok_path,
        tmp_path / "one",
        workers=1,
        batch_docs=50,
        tokens_per_shard=1000,
        backend="tokenizers",
    )
    two = encode_to_shards(
        iter(texts), tok_path, tmp_path / "two", workers=2, batch_docs=13, tokens_per_shard=1000
    )
    three = encode_to_shards(
        texts, tok_path, tmp_path / "three", workers=2, tokens_per_shard=1000, backend="tokenizers"
    )
    assert one == two == three and len(one["shards"]) > 3
    for shard in one["shards"]:
        a = (tmp_path / "one" / shard["file"]).read_bytes()
        assert (
            a
            == (tmp_path / "two" / shard["file"]).read_bytes()
            == (tmp_path / "three" / shard["file"]).read_bytes()
        )
        assert shard["tokens"] <= 1000 and a[:2] == b"\x00\x00"  # each shard starts with <|bos|> (id 0)
        idx = (tmp_path / "one" / shard["doc_index"]).read_bytes()
        assert idx == (tmp_path / "two" / shard["doc_index"]).read_bytes() and len(idx) == 8 * shard["docs"]
    assert sum(s["docs"] for s in one["shards"]) == 300
    shards = open_shards(tmp_path / "one")
    assert sum(int((s == 0).sum()) for s in shards) == 300
    flat = np.concatenate(shards)
    assert flat.tolist() == expected_stream(tok, texts)
    starts = document_starts(tmp_path / "one")
    assert len(starts) == 300 and starts.tolist() == np.flatnonzero(flat == 0).tolist()


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
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "index.json",
        "shard_00000.bin",
        "shard_00000.idx",
    ]
    assert read_index(tmp_path / "t") == index and index["docs"] == 3


def test_empty_input_writes_one_empty_shard(tok_path, tmp_path):
    index = encode_to_shards([], tok_path, tmp_path / "e", workers=1)
    assert (index["tokens"], index["docs"], len(index["shards"])) == (0, 0, 1)
    assert len(open_tokens(tmp_path / "e")) == 0 and len(document_starts(tmp_path / "e")) == 0


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


def test_append_eos_places_eos_after_every_document(tok_path, corpus, tmp_path):
    tok = load_tokenizer(tok_path)
    texts = corpus[:20]
    index = encode_to_shards(texts, tok_path, tmp_path / "t", workers=1, append_eos=True)
    expected = []
    for text in texts:
        expected += [0] + tok.encode(text, add_special_tokens=False).ids + [1]
    assert open_tokens(tmp_path / "t").tolist() == expected
    assert (index["bos_id"], index["eos_id"], index["tokens"]) == (0, 1, len(expected))


def test_document_starts_without_doc_index_scan_for_bos(tok_path, corpus, tmp_path):
    """Token directories written before .idx files existed still give document starts."""
    encode_to_shards(corpus[:50], tok_path, tmp_path / "t", workers=1, tokens_per_shard=300)
    with_idx = document_starts(tmp_path / "t")
    index = json.loads((tmp_path / "t" / "index.json").read_text())
    for shard in index["shards"]:
        (tmp_path / "t" / shard.pop("doc_index")).unlink()
    del index["bos_id"], index["eos_id"]
    (tmp_path / "t" / "index.json").write_text(json.dumps(index))
    assert document_starts(tmp_path / "t").tolist() == with_idx.tolist() and len(with_idx) == 50


def test_corrupt_doc_index_is_reported(tok_path, corpus, tmp_path):
    encode_to_shards(corpus[:5], tok_path, tmp_path / "t", workers=1)
    with (tmp_path / "t" / "shard_00000.idx").open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(InputError, match="shard_00000.idx"):
        document_starts(tmp_path / "t")


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "word"])
def test_other_kinds_encode_to_shards(kind, trained, corpus, tmp_path):
    from lmforge.tokenizer.train import save_tokenizer

    tok = trained[kind]
    path = save_tokenizer(tok, tmp_path / "tok")
    index = encode_to_shards(corpus[:30], path, tmp_path / "t", workers=1)
    assert open_tokens(tmp_path / "t").tolist() == expected_stream(tok, corpus[:30])
    assert index["docs"] == 30 and index["bytes"] == sum(len(t.encode()) for t in corpus[:30])
