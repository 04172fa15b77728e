"""recipes/translation.yaml: it plans (every stage config valid, the DAG in order) for Multi30k and
with the documented Europarl overrides, and its baselines apply to both tasks' documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import load_yaml, parse_overrides
from lmforge.eval.baselines import get_baseline
from lmforge.eval.tasks import load_task
from lmforge.stages.run import plan

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
RECIPE = ROOT / "recipes" / "translation.yaml"
EUROPARL = ["translate.tasks=[europarl_en_fr]", "eval.tasks=[europarl_en_fr]"]


@pytest.mark.parametrize("overrides,task", [([], "multi30k_en_fr"), (EUROPARL, "europarl_en_fr")])
def test_recipe_plans(tmp_path: Path, overrides: list[str], task: str) -> None:
    steps = plan(load_yaml(RECIPE), parse_overrides(overrides), tmp_path)
    order = [s.instance for s in steps]
    assert order == ["data", "tokenizer", "pretrain", "translate", "eval", "report"]
    by = {s.instance: s.config for s in steps}
    assert by["translate"].tasks == [task] and by["eval"].tasks == [task]
    assert by["eval"].model == "@translate" and by["eval"].baselines == ["ibm1", "copy"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (development machine only)")
@pytest.mark.parametrize("task", ["multi30k_en_fr", "europarl_en_fr"])
def test_recipe_baselines_apply(task: str) -> None:
    t = load_task(task, data_dir=SHARED)
    assert all(get_baseline(b).applies(t) for b in load_yaml(RECIPE)["stages"]["eval"]["baselines"])
