"""Every shipped fine-tuning recipe plans: valid configs, known stage kinds, inputs that form a DAG."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import load_yaml
from lmforge.errors import ConfigError
from lmforge.stages.run import plan

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


@pytest.mark.parametrize(
    "name", ["sft", "lora", "sst2-classify", "multitask", "dapt", "contrastive", "transfer"]
)
def test_recipe_plans(name, tmp_path):
    steps = plan(load_yaml(RECIPES / f"{name}.yaml"), {}, tmp_path)
    kinds = [s.kind for s in steps]
    assert kinds[:3] == ["data", "tokenizer", "pretrain"] and kinds[-1] == "report"
    assert any(k.startswith("finetune.") for k in kinds)


def test_sst2_recipe_paths_are_overridable(tmp_path):
    steps = plan(
        load_yaml(RECIPES / "sst2-classify.yaml"), {"classify": {"train": "x.txt", "dev": "y.txt"}}, tmp_path
    )
    classify = next(s for s in steps if s.instance == "classify")
    assert (classify.config.train, classify.config.dev) == ("x.txt", "y.txt")
    assert classify.needs == ["pretrain"]


def test_unknown_method_kind_is_named(tmp_path):
    recipe = {"stages": {"c": {"stage": "finetune.clasify"}}}
    with pytest.raises(ConfigError, match="did you mean 'finetune.classify'"):
        plan(recipe, {}, tmp_path)
    with pytest.raises(ConfigError, match="valid kinds: finetune.sft"):
        plan({"stages": {"finetune": {}}}, {}, tmp_path)
