"""The CLI table, --help for every stage, fast start-up, and config errors before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmforge.cli import main
from lmforge.config import describe
from lmforge.stages.registry import STAGES as REGISTRY
from lmforge.stages.registry import commands, kinds

STAGES = [
    "data",
    "tokenizer",
    "pretrain",
    "finetune",
    "align",
    "eval",
    "harness",
    "generate",
    "chat",
    "serve",
    "export",
    "import",
    "scaling",
    "report",
    "run",
]


def test_table_has_every_stage_in_order():
    assert list(commands()) == STAGES
    assert "finetune.sft" in kinds() and "align.dpo" in kinds() and "run" not in kinds()


def test_top_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in STAGES:
        assert f"  {name} " in out


# every stage of the registry, methods of a group included ("finetune sft")
@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in ("run", "harness")])
def test_stage_help_lists_every_option(name, capsys):
    import importlib

    assert main([*name.split(" "), "--help"]) == 0
    out = capsys.readouterr().out
    module = importlib.import_module(REGISTRY[name].module)
    for key, tp, default, meaning in describe(module.Config):
        assert f"--{key} " in out, key
        assert meaning and meaning in out
        assert f"type: {tp}; default: {default}" in out


def test_run_help(capsys):
    assert main(["run", "--help"]) == 0
    assert "--force" in capsys.readouterr().out


def test_unknown_command_suggests(capsys):
    assert main(["pretrian"]) == 2
    assert "did you mean 'pretrain'" in capsys.readouterr().err.lower()


def test_method_command_without_method_lists_methods(capsys):
    assert main(["scaling"]) == 2
    assert "sweep" in capsys.readouterr().out


def test_help_imports_no_torch():
    """``--help`` stays instant because it loads no heavy library (timings belong in bench/, not tests)."""
    code = (
        "import sys, time; t=time.perf_counter(); from lmforge.cli import main; import io, contextlib;\n"
        "buf=io.StringIO()\n"
        "with contextlib.redirect_stdout(buf): main(['pretrain', '--help'])\n"
        "print(time.perf_counter()-t, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1] == "False", "pretrain --help must not import torch"


def test_bad_option_fails_before_work(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["pretrain", f"--out={out}", "--model.n_embd", "100", "--model.n_head", "3"]) == 2
    err = capsys.readouterr().err
    assert "model.n_embd" in err and "divisible" in err
    assert not out.exists() and not (tmp_path / "p.partial").exists()


def test_unknown_option_names_nearest(tmp_path, capsys):
    assert main(["pretrain", f"--out={tmp_path / 'p'}", "--max_step", "3"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err


def test_missing_input_is_clear(tmp_path, capsys):
    assert main(["tokenizer", f"--out={tmp_path / 'tokenizer'}"]) == 2
    err = capsys.readouterr().err
    assert "data" in err and "has not finished" in err


def test_missing_source_fails_before_work(tmp_path, capsys):
    assert main(["data", f"--out={tmp_path / 'data'}", "--input", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err
    assert not (tmp_path / "data.partial").exists()


def test_run_rejects_bad_recipe_before_work(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  data: {}\n  pretrain: {lr: -1}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "pretrain.lr" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()
    recipe.write_text("name: r\nstagez: {}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "did you mean 'stages'" in capsys.readouterr().err
    recipe.write_text("name: r\nstages:\n  data: {}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "dta.max_docs=3"]) == 2
    assert "did you mean 'data'" in capsys.readouterr().err


def test_summary_shows_headline_metrics_first() -> None:
    from lmforge.stages.invoke import headline

    metrics = {"audit_docs": 3, "bytes_in": 10, "docs_out": 7, "val_bpb": 1.2, "val_loss": 2.0, "zeta": 1}
    assert [k for k, _ in headline(metrics)] == [
        "val_loss",
        "val_bpb",
        "docs_out",
        "audit_docs",
        "bytes_in",
        "zeta",
    ]


def test_step_line_labels_the_smoothed_loss_and_its_eta_honours_the_budget() -> None:
    from lmforge.log import step_line

    line = step_line(10, 600, {"ema_loss": 3.5}, elapsed_s=60.0)
    assert "ema_loss 3.5000" in line and "eta 0:59:00" in line  # 590 steps at 6 s each
    assert "eta 0:04:00" in step_line(10, 600, {"ema_loss": 3.5}, elapsed_s=60.0, budget_s=300.0)


def test_warmup_longer_than_the_run_is_clamped_with_a_warning(caplog) -> None:
    from lmforge.config import from_dict
    from lmforge.stages import pretrain

    with caplog.at_level("WARNING"):
        cfg = from_dict(pretrain.Config, {"max_steps": 20, "warmup_steps": 50, "out": "x"})
    assert cfg.warmup_steps == 20 and "warmup_steps 50 > max_steps 20" in caplog.text
