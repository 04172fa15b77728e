"""Every shipped recipe plans: its stage configs validate and its ``@`` inputs form a DAG."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import load_yaml
from lmforge.stages.run import plan

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
ADD_ONS = {"eval-fewshot"}  # run beside a finished demo run: its inputs are stages of that run


@pytest.mark.parametrize(
    "recipe",
    [r for r in RECIPES if r.stem not in ADD_ONS],
    ids=[r.stem for r in RECIPES if r.stem not in ADD_ONS],
)
def test_recipe_plans(recipe, tmp_path):
    steps = plan(load_yaml(recipe), {}, tmp_path)
    assert steps and len({s.instance for s in steps}) == len(steps)


def test_shakespeare_recipe_measures_its_layout_and_optimizer(tmp_path):
    steps = plan(load_yaml(RECIPES[0].parent / "shakespeare-cpu.yaml"), {}, tmp_path)
    cfg = next(s for s in steps if s.kind == "pretrain").config
    assert (cfg.procs, cfg.optimizer, cfg.max_time_s, cfg.schedule_clock) == ("auto", "auto", 130, "time")
    assert (cfg.packing, cfg.muon_momentum, cfg.eval_stride) == ("shuffled", 0.9, 32)
