"""recipes/qa.yaml end to end on real SQuAD and BoolQ (shrunk by overrides): model and baselines scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "squad-v1.1").is_dir(), reason="../shared/data is absent")
def test_qa_recipe_scores_model_and_baselines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the recipe names ../shared/data relative to the checkout
    small = [
        "data.max_docs=200",
        "tokenizer.vocab_size=512",
        "pretrain.model={n_layer: 1, n_head: 2, n_embd: 32, block_size: 256}",
        "pretrain.max_steps=4",
        "pretrain.warmup_steps=1",
        "pretrain.max_time_s=0",
        "pretrain.eval_every=4",
        "pretrain.ckpt_every=4",
        "pretrain.eval_tokens=2048",
        "pretrain.device=cpu",
        "finetune.max_steps=2",
        "finetune.eval_every=2",
        "finetune.max_train_examples=40",
        "finetune.device=cpu",
        "eval.limit=6",
        "eval.max_tokens=2048",
        "eval.device=cpu",
    ]
    out = tmp_path / "qa"
    assert main(["run", "recipes/qa.yaml", "--out", str(out), "-q", *small]) == 0
    ft = json.loads((out / "finetune" / "manifest.json").read_text())["metrics"]
    assert ft["squad_train_examples"] > 0 and ft["boolq_train_examples"] > 0
    m = json.loads((out / "eval" / "manifest.json").read_text())["metrics"]
    for key in (
        "squad_0shot_exact_match",
        "squad_0shot_f1",
        "boolq_0shot_acc",
        "baseline_sliding-window_squad_exact_match",
        "baseline_sliding-window_squad_f1",
        "baseline_majority_boolq_acc",
        "baseline_bow-qa_boolq_acc",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    # each baseline runs only on the task it answers
    assert not any(k.startswith(("baseline_sliding-window_boolq", "baseline_bow-qa_squad")) for k in m)
    assert "baseline:sliding-window" in (out / "report.md").read_text()
