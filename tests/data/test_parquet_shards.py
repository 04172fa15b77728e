"""Tests for lmforge.data.shards: hash split and parquet shard writing/reading."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from lmforge.data.document import Document
from lmforge.data.shards import ShardWriter, iter_shard_texts, read_documents, split_of
from lmforge.errors import InputError


def test_split_is_deterministic_and_near_fraction():
    ids = [f"doc-{i}" for i in range(20_000)]
    splits = [split_of(i, 0.1) for i in ids]
    assert splits == [split_of(i, 0.1) for i in ids]
    assert 0.09 < splits.count("val") / len(ids) < 0.11
    assert [split_of(i, 0.1, seed=1) for i in ids] != splits  # the seed matters
    wider = [split_of(i, 0.3) for i in ids]  # raising the fraction only moves train → val
    assert all(w == "val" for s, w in zip(splits, wider) if s == "val")
    assert {split_of(i, 0.0) for i in ids[:100]} == {"train"}
    assert {split_of(i, 1.0) for i in ids[:100]} == {"val"}
    with pytest.raises(ValueError, match="val_fraction"):
        split_of("x", 1.5)


def test_shard_round_trip(tmp_path):
    docs = [Document(id=f"id{i}", text=f"text {i} ✓", metadata={"source": f"src{i % 2}"}) for i in range(25)]
    with ShardWriter(tmp_path / "train", rows_per_shard=10) as writer:
        for doc in docs:
            writer.write(doc)
    names = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert names == [
        "shard_00000.parquet",
        "shard_00001.parquet",
        "shard_00002.parquet",
    ]  # no temp files left
    assert [s["rows"] for s in writer.shards] == [10, 10, 5]
    assert sum(s["bytes"] for s in writer.shards) == sum(len(d.text.encode()) for d in docs)
    assert pq.read_schema(tmp_path / "train" / names[0]).names == ["id", "text", "source"]
    assert list(iter_shard_texts(tmp_path / "train")) == [d.text for d in docs]
    assert list(read_documents(tmp_path / "train")) == docs


def test_empty_writer_leaves_one_empty_shard_and_stale_shards_are_replaced(tmp_path):
    with ShardWriter(tmp_path / "val"):
        pass
    assert list(read_documents(tmp_path / "val")) == []
    with ShardWriter(tmp_path / "train", rows_per_shard=1) as writer:  # an earlier attempt: 3 shards
        for i in range(3):
            writer.write(Document(id=str(i), text="old"))
    with ShardWriter(tmp_path / "train") as writer:
        writer.write(Document(id="a", text="new"))
    assert list(iter_shard_texts(tmp_path / "train")) == ["new"]


def test_failed_write_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "x", rows_per_shard=10) as writer:
        writer.write(Document(id="a", text="b"))
        raise RuntimeError("interrupted")
    assert list((tmp_path / "x").iterdir()) == []


def test_reading_missing_shards_names_the_directory(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        list(iter_shard_texts(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        list(read_documents(tmp_path / "empty"))


def test_tail_split_cuts_each_document_at_the_fraction():
    from lmforge.data.document import Document
    from lmforge.data.shards import tail_split

    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = tail_split(Document("d", text, {"source": "s"}), 0.1)
    assert (train.id, val.id) == ("d#train", "d#val")
    assert train.text + val.text == text and len(val.text) == 100
    assert train.metadata == {"source": "s", "split": "train"} and val.metadata["split"] == "val"
    assert [p.metadata["split"] for p in tail_split(Document("e", "abc", {}), 0.1)] == ["train", "val"]
    assert [p.metadata["split"] for p in tail_split(Document("e", "a", {}), 0.1)] == [
        "val"
    ]  # empty train part left out
