"""GRPO with code rewards: the stage's reward path gives 1 to a right program and 0 to a wrong one, and
tiny GRPO runs on YAML code tasks complete with the rewards their problems fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import from_dict
from lmforge.errors import ConfigError
from lmforge.stages.align import grpo


def _task(root: Path, name: str, rows: list[dict], train: list[dict]) -> Path:
    (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{name}_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / f"{name}.yaml").write_text(
        f"kind: code\npath: {name}.jsonl\nfewshot_path: {name}_train.jsonl\ntemplate: '{{prompt}}'\n"
        "prefix: prompt\ntest: test\nanswer: body\ntarget_delimiter: ''\nuntil: [\"\\n\"]\n"
    )
    return root / f"{name}.yaml"


def test_reward_path_scores_right_and_wrong_programs(tmp_path: Path) -> None:
    row = {"prompt": "def sq(x):\n", "test": "assert sq(3) == 9\n", "body": "    return x * x"}
    path = _task(tmp_path, "sq", [row], [row, row])
    cfg = from_dict(grpo.Config, {"task": str(path), "out": str(tmp_path / "o"), "val_fraction": 0.5})
    task, train, held = grpo.load_code_problems(cfg)
    assert len(train) == 1 and len(held) == 1  # both from the training file
    reward = grpo.code_scorer(task)
    doc = train[0]
    assert reward(doc, "    return x * x") == 1.0
    assert reward(doc, "    return x + x") == 0.0
    assert reward(doc, "    return x * x\n    junk that never runs") == 1.0  # cut at the stop string
    assert reward(doc, "    while True: pass") == 0.0  # timed out in the sandbox


def _run(align_dir: Path, tmp_path: Path, name: str, returns: int) -> dict:
    """A GRPO run whose completions land in a comment line after ``def f(): return returns``: the tests
    (f() == 1) pass whatever the policy writes when ``returns`` is 1 (unless the untrained policy's
    random bytes end the comment: a carriage return, a null byte), never when it is 2."""
    rows = [{"prompt": f"def f():\n    return {returns}\n# ", "test": "assert f() == 1\n", "body": "ok"}] * 6
    path = _task(tmp_path, name, rows[:1], rows)
    cfg = from_dict(
        grpo.Config,
        {
            "model": str(align_dir / "decoder"),
            "task": str(path),
            "out": str(tmp_path / name),
            "max_steps": 2,
            "eval_every": 2,
            "batch_size": 2,
            "group_size": 2,
            "max_new_tokens": 4,
            "val_fraction": 0.3,
        },
    )
    return grpo.main(cfg)["metrics"]


def test_tiny_grpo_runs_on_code_tasks(align_dir: Path, tmp_path: Path) -> None:
    passing = _run(align_dir, tmp_path, "pass", 1)
    assert passing["steps"] == 2 and passing["eval_problems"] >= 1 and passing["train_problems"] >= 1
    assert passing["reward_first"] >= 0.5 and passing["reward_last"] >= 0.5
    failing = _run(align_dir, tmp_path, "fail", 2)
    assert failing["reward_first"] == 0.0 and failing["reward_last"] == 0.0
    assert failing["grpo_accuracy_before"] == 0.0 and failing["grpo_accuracy_after"] == 0.0
    assert "format" not in failing


def test_code_task_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a code task"):
        from_dict(grpo.Config, {"task": "sst2", "data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="needs data_dir"):
        from_dict(grpo.Config, {"task": "mbpp"})
    with pytest.raises(ConfigError, match="not both"):
        from_dict(grpo.Config, {"task": "mbpp", "data_dir": str(tmp_path), "problems": "p.jsonl"})
    with pytest.raises(ConfigError, match="format"):
        from_dict(grpo.Config, {"task": "mbpp", "data_dir": str(tmp_path), "format_weight": 0.5})
    no_pool = tmp_path / "np.yaml"
    (tmp_path / "np.jsonl").write_text(json.dumps({"prompt": "x", "test": "assert True"}) + "\n")
    no_pool.write_text("kind: code\npath: np.jsonl\ntemplate: '{prompt}'\n")
    with pytest.raises(ConfigError, match="no training split"):
        grpo.load_code_problems(from_dict(grpo.Config, {"task": str(no_pool)}))
