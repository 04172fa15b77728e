"""Refusals leave nothing behind: every run-store stage asked to run without ``--out`` (or with a bad
option) exits 2 with a message naming the option, and writes no directory, ``.partial`` or file."""

from __future__ import annotations

import importlib

import pytest

from lmforge.cli import main
from lmforge.stages.registry import STAGES

# run-store stages: those with an `out` option that is required (generate prints without one; chat,
# serve, harness and run are not single run-store stages)
NOT_STORED = {"generate", "chat", "serve", "harness", "run"}
STORED = [
    n
    for n in STAGES
    if n not in NOT_STORED and "out" in importlib.import_module(STAGES[n].module).Config.__dataclass_fields__
]


@pytest.mark.parametrize("name", STORED)
def test_no_out_is_refused_before_anything_is_written(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*name.split(" "), "-q"]) == 2
    err = capsys.readouterr().err
    assert "error" in err
    assert list(tmp_path.rglob("*")) == []  # no stage directory, no .partial, no log


def test_the_out_message_names_the_option_and_an_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    assert main(["pretrain", "--tokenizer", str(tmp_path / "tok"), "-q"]) == 2
    assert "out: an output directory is required (e.g. --out runs/x/pretrain)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_a_bad_option_is_refused_before_the_stage_directory_exists(tmp_path, capsys):
    out = tmp_path / "run" / "pretrain"
    assert main(["pretrain", "--out", str(out), "--lr", "-1", "-q"]) == 2
    assert "lr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["pretrain", "--tokenizer", ""], "tokenizer"),
        (["align", "dpo", "--train", "x.jsonl", "--model", ""], "model"),
        (["export", "gguf", "--model", ""], "model"),
        (["scaling", "fit", "--sweep", ""], "sweep"),
    ],
)
def test_an_emptied_required_input_is_refused_by_name(argv, key, tmp_path, capsys):
    """An input whose default names a stage (``model: "@pretrain"``) cannot be emptied; optional inputs
    (default empty, e.g. ``val``) can."""
    assert main([*argv, "--out", str(tmp_path / "run" / "x"), "-q"]) == 2
    assert f"{key}: is required" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
