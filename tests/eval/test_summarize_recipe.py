"""recipes/summarization.yaml end to end on real MBPP and WikiText (shrunk by overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "mbpp").is_dir(), reason="../shared/data is absent"
)
def test_summarization_recipe_scores_model_and_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the recipe names ../shared/data relative to the checkout
    small = [
        "data.max_docs=80",
        "tokenizer.vocab_size=512",
        "pretrain.model={n_layer: 2, n_head: 2, n_embd: 64, block_size: 256}",
        "pretrain.max_steps=20",
        "pretrain.warmup_steps=5",
        "pretrain.max_time_s=0",
        "pretrain.eval_every=10",
        "pretrain.ckpt_every=10",
        "pretrain.eval_tokens=4096",
        "pretrain.device=cpu",
        "finetune.max_steps=10",
        "finetune.eval_every=5",
        "finetune.device=cpu",
        "eval.limit=12",
        "eval.device=cpu",
    ]
    out = tmp_path / "summ"
    assert main(["run", "recipes/summarization.yaml", "--out", str(out), "-q", *small]) == 0
    ft = json.loads((out / "finetune" / "manifest.json").read_text())["metrics"]
    assert ft["mbpp_summarize_train_examples"] > 300  # 374 minus the held-out tenth
    m = json.loads((out / "eval" / "manifest.json").read_text())["metrics"]
    for metric in ("rouge1", "rouge2", "rougeL"):
        for key in (
            f"mbpp_summarize_0shot_{metric}",
            f"wikitext_lead_0shot_{metric}",
            f"baseline_name-template_mbpp_summarize_{metric}",
            f"baseline_tfidf-nn_mbpp_summarize_{metric}",
            f"baseline_lead-k_wikitext_lead_{metric}",
            f"baseline_textrank_wikitext_lead_{metric}",
        ):
            assert 0.0 <= m[key] <= 1.0, key
    # the baselines of one source do not run on the other
    assert not any(k.startswith("baseline_lead-k_mbpp") or k.startswith("baseline_tfidf-nn_wiki") for k in m)
    assert m["baseline_lead-k_wikitext_lead_rouge1"] > 0.2
    assert "baseline:textrank" in (out / "report.md").read_text()
