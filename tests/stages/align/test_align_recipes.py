"""Every shipped alignment recipe plans: valid configs, known stage kinds, inputs that form a DAG."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import load_yaml
from lmforge.errors import ConfigError
from lmforge.stages.run import plan

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


@pytest.mark.parametrize(
    "name,kind", [("dpo", "align.dpo"), ("reward", "align.reward"), ("grpo", "align.grpo")]
)
def test_recipe_plans(name, kind, tmp_path):
    steps = plan(load_yaml(RECIPES / f"{name}.yaml"), {}, tmp_path)
    kinds = [s.kind for s in steps]
    assert kinds[:3] == ["data", "tokenizer", "pretrain"] and kinds[-1] == "report"
    assert kind in kinds


def test_unknown_align_kind_is_named(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'align.dpo'"):
        plan({"stages": {"x": {"stage": "align.dop"}}}, {}, tmp_path)


def test_align_method_takes_its_recipe_section():
    from lmforge.stages.align import method_module
    from lmforge.stages.invoke import config_from_args

    cfg = config_from_args(
        "align dpo", method_module("dpo"), [str(RECIPES / "dpo.yaml"), "beta=0.2"], "align.dpo"
    )
    assert (
        cfg.beta == 0.2 and cfg.model == "@pretrain" and cfg.train[0].endswith("harmless-base_test.jsonl.gz")
    )
