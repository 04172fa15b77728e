"""recipes/codegen.yaml plans: pretrain → finetune.task on MBPP's training split → eval with the
retrieval baseline → report, the eval reading the fine-tuned model."""

from __future__ import annotations

from pathlib import Path

from lmforge.config import load_yaml
from lmforge.stages.run import plan

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "codegen.yaml"


def test_codegen_recipe_plans(tmp_path: Path) -> None:
    steps = {s.instance: s for s in plan(load_yaml(RECIPE), {}, tmp_path)}
    assert [s for s in steps] == ["data", "tokenizer", "pretrain", "finetune", "eval", "report"]
    assert steps["finetune"].kind == "finetune.task" and steps["finetune"].needs == ["pretrain"]
    assert steps["finetune"].config.tasks == ["mbpp", "humaneval"]
    ev = steps["eval"].config
    assert "finetune" in steps["eval"].needs and ev.baselines == ["code-retrieval"]
    assert ev.tasks == ["humaneval", "mbpp"] and ev.limit == 0
    quick = plan(load_yaml(RECIPE), {"eval": {"limit": 5, "samples": 2, "temperature": 0.8}}, tmp_path)
    assert next(s for s in quick if s.instance == "eval").config.code_sampling()["samples"] == 2
