"""The documented example, recipes/sst2-classify.yaml, end to end on real SST-2 (shrunk by overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "sst2").is_dir(), reason="../shared/data/sst2 is absent"
)
def test_sst2_recipe_runs_with_the_baseline(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe names ../shared/data relative to the checkout
    small = [
        "data.max_docs=120",
        "tokenizer.vocab_size=512",
        "tokenizer.compare=[]",
        "pretrain.model={n_layer: 2, n_head: 2, n_embd: 64, block_size: 64}",
        "pretrain.max_steps=30",
        "pretrain.warmup_steps=5",
        "pretrain.max_time_s=0",
        "pretrain.eval_every=15",
        "pretrain.ckpt_every=15",
        "pretrain.eval_tokens=4096",
        "pretrain.device=cpu",
        "classify.max_train_examples=600",
        "classify.max_steps=30",
        "classify.eval_every=15",
        "classify.device=cpu",
    ]
    out = tmp_path / "sst2"
    assert main(["run", "recipes/sst2-classify.yaml", "--out", str(out), "-q", *small]) == 0
    m = json.loads((out / "classify" / "manifest.json").read_text())
    assert m["metrics"]["dev_examples"] == 872 and m["metrics"]["train_examples"] == 600
    assert {"accuracy", "macro_f1", "bow_accuracy"} <= set(m["metrics"])
    assert m["metrics"]["bow_accuracy"] > 0.6
    assert "bag-of-words" in (out / "report.md").read_text()
