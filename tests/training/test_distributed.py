"""Data parallelism on 2 CPU ranks with gloo: DDP and FSDP2 follow the single-process trajectory.

One process with batch 2B and two ranks with batch B each see the same global batches (every rank draws
the global batch and takes its rows), and the token-weighted loss is scaled so averaged gradients equal
the global mean; so the per-step losses must agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]


def pretrain(
    tokenizer_dir: Path, out: Path, batch: int, nproc: int = 1, strategy: str = "ddp", procs: int = 1
) -> list[dict]:
    args = [
        "pretrain",
        f"--tokenizer={tokenizer_dir}",
        f"--out={out}",
        f"--batch_size={batch}",
        "--model.n_layer=2",
        "--model.n_head=2",
        "--model.n_embd=32",
        "--model.block_size=32",
        "--max_steps=6",
        "--warmup_steps=2",
        "--eval_every=3",
        "--ckpt_every=3",
        "--eval_tokens=512",
        "--grad_accum=2",
        f"--strategy={strategy}",
        f"--procs={procs}",
        "--device=cpu",
        "--dtype=fp32",  # exact comparisons across rank counts: no measured precision choice
        "--threads=1",
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "lmforge", *args]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "lmforge", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_equal_one_rank_with_twice_the_batch(tokenizer_dir, tmp_path, strategy):
    single = pretrain(tokenizer_dir, tmp_path / "single", batch=8)
    multi = pretrain(tokenizer_dir, tmp_path / strategy, batch=4, nproc=2, strategy=strategy)
    assert [r["step"] for r in single] == [r["step"] for r in multi] == list(range(1, 7))
    for a, b in zip(single, multi):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5)
    m = json.loads((tmp_path / strategy / "manifest.json").read_text())
    assert m["status"] == "complete" and m["metrics"]["world_size"] == 2
    # the checkpoint written by 2 ranks is a full, single-process-loadable checkpoint
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    model, cfg = load_model(resolve_checkpoint(tmp_path / strategy, "last"))
    assert cfg.n_layer == 2


@pytest.mark.slow
def test_procs_starts_local_ranks_that_equal_one_rank_with_twice_the_batch(tokenizer_dir, tmp_path):
    """``procs: 2`` (no torchrun) runs the same 2-rank job; its manifest and checkpoints are complete."""
    single = pretrain(tokenizer_dir, tmp_path / "single", batch=8)
    local = pretrain(tokenizer_dir, tmp_path / "procs", batch=4, procs=2)
    assert [r["step"] for r in local] == list(range(1, 7))
    for a, b in zip(single, local):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5)
    m = json.loads((tmp_path / "procs" / "manifest.json").read_text())
    assert m["status"] == "complete" and m["metrics"]["world_size"] == 2


def test_procs_reports_a_rank_error_in_the_parent(tokenizer_dir, tmp_path):
    """An error raised inside a local rank reaches the command as a clear message, not a hang."""
    from lmforge.config import from_dict
    from lmforge.errors import ConfigError
    from lmforge.stages import pretrain as stage

    cfg = from_dict(
        stage.Config,
        {
            "tokenizer": str(tokenizer_dir),
            "out": str(tmp_path / "bad"),
            "procs": 2,
            "threads": 1,
            "max_steps": 2,
            "warmup_steps": 0,
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 8},
        },
    )
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        stage.main(cfg)


def test_pretraining_and_the_scaling_sweep_run_the_one_training_step(tokenizer_dir, tmp_path, monkeypatch):
    """The invariance tests guard ``training.step.train_step``; pretraining and a scaling point take
    every optimiser step through it (fine-tuning's ``fit`` is tested through its own trajectory)."""
    from lmforge.scaling import points
    from lmforge.training import step

    calls = []
    real = step.train_step

    def counting(model, optimizers, micro_batches, loss_sum, **kw):
        calls.append(len(micro_batches))
        return real(model, optimizers, micro_batches, loss_sum, **kw)

    monkeypatch.setattr(step, "train_step", counting)
    args = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=32"]
    out = tmp_path / "p"
    common = ["--max_steps=3", "--warmup_steps=1", "--eval_tokens=256", "--device=cpu", "--dtype=fp32", "-q"]
    assert (
        main(["pretrain", f"--tokenizer={tokenizer_dir}", f"--out={out}", "--grad_accum=2", *args, *common])
        == 0
    )
    assert calls == [2, 2, 2]
    recipe = points.PointRecipe(block_size=16, batch_size=2, head_dim=16, device="cpu", dtype="fp32")
    m = points.run_point(tokenizer_dir, tmp_path / "points", 1, 32, 96, recipe)
    assert m["status"] == "complete" and calls == [2, 2, 2, 1, 1, 1]  # 96 tokens = 3 steps of 2 x 16
