"""Every fine-tuning method inside `lmforge run`: recipe kinds finetune.<method>, @ inputs between them
(transfer: a classifier from the SFT model, compared with the base), caching, and the run report."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lmforge.cli import main


@pytest.mark.slow  # ~5 s: scikit-learn and matplotlib imports, eight stages
def test_finetune_methods_run_as_a_recipe_with_report(ft_dir, tmp_path, capsys):
    base, d = ft_dir / "decoder", ft_dir
    common = "max_steps: 3, batch_size: 4, eval_every: 2, device: cpu, threads: 1"
    lora = importlib.util.find_spec("lmforge.model.lora") is not None
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(
        f"""
name: ft
stages:
  sft: {{stage: finetune.sft, model: {base}, train: [{d / "chat.jsonl"}], {common}}}
  {"lora" if lora else "lora-skipped"}: {{stage: finetune.{"lora" if lora else "sft"}, model: {base}, train: [{d / "chat.jsonl"}], {common}}}
  classify: {{stage: finetune.classify, model: "@sft", compare_to: {base}, train: {d / "sent_train.txt"},
             dev: {d / "sent_dev.txt"}, {common}}}
  multitask: {{stage: finetune.multitask, model: {base}, bow_baseline: false, {common},
              tasks: {{topic: {{train: {d / "topic.jsonl"}}}, sentiment: {{train: {d / "sent_train.txt"}}}}}}}
  dapt: {{stage: finetune.dapt, model: {base}, domain: [{d / "domain.txt"}], general: {d / "general.txt"},
         replay: 0.5, {common}}}
  contrastive: {{stage: finetune.contrastive, model: {base}, train: {d / "pairs.jsonl"}, val_fraction: 0.3, {common}}}
  eval-sft: {{stage: eval, model: "@sft", tokenizer: {tmp_path / "tokenizer-stage"}, device: cpu}}
  report: {{}}
"""
    )
    # the eval stage reads token shards: make a minimal tokenizer stage directory for it
    from lmforge.tokenizer.shards import encode_to_shards

    for split in ("train", "val"):
        text = (d / "general.txt").read_text()
        encode_to_shards(
            [text], d / "tokenizer.json", tmp_path / "tokenizer-stage" / "tokens" / split, workers=1
        )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    m = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/manifest.json")}
    assert m["classify"]["stage"] == "finetune.classify"
    assert {"accuracy", "macro_f1", "bow_accuracy", "compare_accuracy", "transfer_gain"} <= set(
        m["classify"]["metrics"]
    )
    assert m["classify"]["inputs"]["model"]["path"] == str(out / "sft")
    assert m["eval-sft"]["metrics"]["val_loss"] > 0  # a fine-tuned LM checkpoint is an ordinary one
    report = (out / "report.md").read_text()
    assert "## Fine-tuning" in report and "confusion matrix" in report
    assert "bag-of-words logistic regression" in report and "transfer" in report
    assert "perplexity before and after" in report and "retrieval of held-out pairs" in report
    assert "Fine-tuning" in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert set(run["cached"]) >= {"sft", "classify", "multitask", "dapt", "contrastive"}
