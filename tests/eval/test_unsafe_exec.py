"""``unsafe_exec``: the stages that run model-written code (eval code tasks, GRPO code rewards) refuse
while validating their config when no sandbox is usable, name the option in the one message, and
pass it down to every program run; it is recorded in the config (the manifest) but not hashed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import from_dict, hash_view, to_dict
from lmforge.errors import ConfigError
from lmforge.eval import sandbox
from lmforge.eval.codegen import score_completions
from lmforge.eval.records import Doc
from lmforge.stages import eval as eval_stage
from lmforge.stages.align import grpo

QUICK = sandbox.Limits(wall_s=8, cpu_s=2)


@pytest.fixture
def no_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bwrap not found on PATH or in /usr/bin")


def _tasks(root: Path) -> tuple[Path, Path]:
    """A code task and a multiple-choice one, as YAML files."""
    row = {"prompt": "def sq(x):\n", "test": "assert sq(3) == 9\n", "body": "    return x * x"}
    (root / "sq.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    (root / "sq.yaml").write_text(
        "kind: code\npath: sq.jsonl\nfewshot_path: sq.jsonl\ntemplate: '{prompt}'\nprefix: prompt\n"
        "test: test\nanswer: body\ntarget_delimiter: ''\n"
    )
    (root / "yn.jsonl").write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}))
    (root / "yn.yaml").write_text("path: yn.jsonl\n")
    return root / "sq.yaml", root / "yn.yaml"


def test_eval_refuses_code_tasks_without_a_sandbox(tmp_path: Path, no_sandbox: None) -> None:
    code, choice = _tasks(tmp_path)
    out = tmp_path / "eval"
    with pytest.raises(ConfigError) as caught:
        from_dict(eval_stage.Config, {"tasks": [str(choice), str(code)], "out": str(out)})
    assert caught.value.key == "unsafe_exec" and "unsafe_exec=true" in str(caught.value)
    assert not out.exists()
    from_dict(eval_stage.Config, {"tasks": [str(choice)]})  # no code runs: no sandbox needed
    cfg = from_dict(eval_stage.Config, {"tasks": [str(code)], "unsafe_exec": True})
    assert to_dict(cfg)["unsafe_exec"] is True  # the manifest's "config"
    assert "unsafe_exec" not in hash_view(cfg)  # same results, same cache key


def test_grpo_refuses_code_rewards_without_a_sandbox(tmp_path: Path, no_sandbox: None) -> None:
    code, _ = _tasks(tmp_path)
    with pytest.raises(ConfigError, match="unsafe_exec: model-written code is only run in a sandbox"):
        from_dict(grpo.Config, {"task": str(code)})
    from_dict(grpo.Config, {})  # arithmetic rewards run no code
    cfg = from_dict(grpo.Config, {"task": str(code), "unsafe_exec": True, "val_fraction": 0.5})
    task, train, _ = grpo.load_code_problems(cfg)
    reward = grpo.code_scorer(task, unsafe_exec=cfg.unsafe_exec)
    assert reward(train[0], "    return x * x") == 1.0 and reward(train[0], "    return x") == 0.0
    with pytest.raises(sandbox.SandboxUnavailable):
        grpo.code_scorer(task)(train[0], "    return x * x")


def test_scoring_passes_unsafe_exec_to_every_program(no_sandbox: None) -> None:
    docs = [Doc("p", test="assert f() == 1\n"), Doc("q", test="assert f() == 2\n")]
    completions = [["def f():\n    return 1\n"], ["def f():\n    return 1\n"]]
    out = score_completions(docs, completions, limits=QUICK, unsafe_exec=True)
    assert out["metrics"]["pass@1"] == 0.5
    assert {r.isolation for rs in out["results"] for r in rs} == {"unsafe"}
    with pytest.raises(sandbox.SandboxUnavailable):
        score_completions(docs, completions, limits=QUICK)
