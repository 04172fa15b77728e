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
    from lmforge.stages.invoke import config_from_args
    from lmforge.stages.run import stage_module

    cfg = config_from_args(
        "align dpo", stage_module("align.dpo", "test"), [str(RECIPES / "dpo.yaml"), "beta=0.2"], "align.dpo"
    )
    assert (
        cfg.beta == 0.2 and cfg.model == "@pretrain" and cfg.train[0].endswith("harmless-base_test.jsonl.gz")
    )


def test_align_cpu_recipe_plans_the_whole_loop(tmp_path):
    steps = {s.instance: s for s in plan(load_yaml(RECIPES / "align-cpu.yaml"), {}, tmp_path)}
    kinds = {name: s.kind for name, s in steps.items()}
    assert kinds == {
        "split": "align.split", "data": "data", "tokenizer": "tokenizer", "pretrain": "pretrain",
        "import": "import.hf", "reward": "align.reward", "reward_decoder": "align.reward",
        "chat": "finetune.sft", "label": "align.label", "dpo": "align.dpo", "ppo": "align.ppo",
        "arithmetic": "align.arithmetic", "sft": "finetune.sft", "grpo": "align.grpo", "report": "report",
    }  # fmt: skip
    assert steps["data"].needs == ["split"] and steps["reward"].needs == ["import", "split"]
    assert set(steps["ppo"].needs) == {"chat", "split", "reward", "reward_decoder"}
    assert set(steps["dpo"].needs) == {"chat", "label", "split", "reward", "reward_decoder"}
    assert set(steps["label"].needs) == {"chat", "split", "reward"}
    # DPO trains on the policy's own replies to training prompts, labelled by the judge; never a held-out one
    assert steps["dpo"].config.train == ["@label/pairs.jsonl"]
    assert steps["label"].config.prompts == ["@split/train.jsonl"]
    assert steps["label"].config.exclude == ["@split/heldout.jsonl"]
    assert steps["sft"].needs == ["pretrain", "arithmetic"]
    assert sorted(steps["grpo"].needs) == ["arithmetic", "sft"]  # trains and evaluates on its files
    # every preference stage trains on the split's training pairs and is scored on its held-out ones
    for name in ("reward", "reward_decoder", "dpo"):
        assert steps[name].config.train == ["@split/train.jsonl"] or name == "dpo"
        assert steps[name].config.val == "@split/heldout.jsonl"
    assert steps["ppo"].config.prompts == ["@split/train.jsonl"]
    assert steps["ppo"].config.val == "@split/heldout.jsonl"
    over = plan(load_yaml(RECIPES / "align-cpu.yaml"), {"reward": {"train": ["mine.jsonl"]}}, tmp_path)
    assert next(s for s in over if s.instance == "reward").config.train == ["mine.jsonl"]


def test_second_round_collect_plans_against_the_first_rounds_dpo(tmp_path):
    order = plan(load_yaml(RECIPES / "align-loop.yaml"), {}, tmp_path)
    steps = {s.instance: s for s in order}
    names = [s.instance for s in order]
    assert steps["collect_r2"].kind == "align.collect" and steps["collect_r2"].config.model == "@dpo_r1"
    assert steps["collect_r2"].needs == ["dpo_r1"]
    assert set(steps["reward_r2"].needs) >= {"collect_r1", "collect_r2"}
    assert names.index("collect_r1") < names.index("reward_r1") < names.index("dpo_r1")
    assert names.index("dpo_r1") < names.index("collect_r2") < names.index("dpo_r2")


def test_an_input_inside_an_unknown_stage_is_named(tmp_path):
    recipe = {
        "stages": {"reward": {"stage": "align.reward", "model": "x", "train": ["@colect/rankings.jsonl"]}}
    }
    with pytest.raises(ConfigError, match="@colect/rankings.jsonl names no stage"):
        plan(recipe, {}, tmp_path)
