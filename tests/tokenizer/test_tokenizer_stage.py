"""Tests for the tokenizer stage: every kind through the CLI, reload, shards, the comparison metrics."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from lmforge.cli import main
from lmforge.data.document import Document
from lmforge.data.shards import ShardWriter
from lmforge.stages.tokenizer import Config
from lmforge.tokenizer.shards import open_tokens, read_index
from lmforge.tokenizer.train import load_meta, load_tokenizer


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "data"
    for split, docs in (("train", corpus[:500]), ("val", corpus[500:])):
        with ShardWriter(root / split) as writer:
            for i, text in enumerate(docs):
                writer.write(Document(id=f"{split}-{i}", text=text, metadata={"source": "test"}))
    return root


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram", "word"])
def test_cli_trains_every_kind_and_it_reloads(kind, data_dir, corpus, tmp_path):
    out = tmp_path / "tokenizer"
    args = ["tokenizer", f"--data={data_dir}", f"--out={out}", "--kind", kind, "--vocab_size", "300"]
    assert main([*args, "--workers", "1", "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["kind"] == kind
    tok, plain = load_tokenizer(out), Tokenizer.from_file(str(out / "tokenizer.json"))
    meta = load_meta(out)
    assert (
        meta["kind"] == kind
        and meta["vocab_size"] == tok.get_vocab_size() == manifest["metrics"]["vocab_size"]
    )
    assert meta["training_sample_bytes"] == sum(len(t.encode()) for t in corpus[:500])
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    val = open_tokens(out / "tokens" / "val").tolist()
    expected = []
    for text in corpus[500:]:
        expected += [0] + plain.encode(text).ids
    assert val == expected
    assert read_index(out / "tokens" / "train")["bytes"] == manifest["metrics"]["train_bytes"]


def test_comparison_metrics_and_report_files(data_dir, tmp_path):
    out = tmp_path / "tokenizer"
    args = ["tokenizer", f"--data={data_dir}", f"--out={out}", "--vocab_size", "300", "--workers", "1"]
    assert (
        main([*args, "--compare", "[bpe, wordpiece, unigram, word]", "--compare_train_bytes", "0", "-q"]) == 0
    )
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    report = json.loads((out / "comparison.json").read_text())
    assert list(report["kinds"]) == ["bpe", "wordpiece", "unigram", "word"]
    for kind in report["kinds"]:
        for name in (
            "bytes_per_token",
            "unk_rate",
            "oov_rate",
            "vocab_used",
            "encode_mb_per_s",
            "train_time_s",
        ):
            assert metrics[f"compare_{kind}_{name}"] == report["kinds"][kind][name]
        assert metrics[f"compare_{kind}_vocab_size"] <= 300
    assert metrics["compare_bpe_unk_rate"] == 0 and metrics["compare_bpe_lossless_docs"] == 1
    assert metrics["compare_bpe_train_time_s"] == metrics["train_time_s"]  # same sample: reused
    assert "| word |" in (out / "comparison.md").read_text()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"vocab_size": 265}, "vocab_size"),
        ({"kind": "word", "vocab_size": 11}, "vocab_size"),
        ({"vocab_size": 300, "compare": ["word", "word"]}, "compare"),
        ({"pre_tokenizer": "(oops"}, "pre_tokenizer"),
        ({"special_tokens": ["<|bos|>"]}, "special_tokens"),
        ({"compare_eval_bytes": -1}, "compare_eval_bytes"),
    ],
)
def test_bad_config_names_the_key(override, key):
    from lmforge.config import ConfigError, from_dict

    with pytest.raises(ConfigError) as info:
        from_dict(Config, override)
    assert info.value.key == key
