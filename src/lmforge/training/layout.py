"""``procs: auto``: one N-thread process or N single-threaded data-parallel processes, chosen by timing
a few training steps of the actual model on this machine.

On a CPU, a small model's matmuls are too small to split well over threads, so N single-threaded ranks
(``procs: N``, ``distributed.run_local_ranks``) can train faster than one process with N threads; a larger
model's matmuls split well, and then one process wins (no gradient all-reduce, one copy of the model).
Which one depends on the model, the batch and the CPU, so ``layout_step_ms`` times both layouts on the
same global batch (N·B rows in one process, B rows on each of N ranks: the same trajectory, tested in
``tests/training/test_distributed.py``) with the optimisers and precision the run will use, and
``choose_procs`` keeps the ranks only when they are at least 10% faster, caching the timings per machine
and shape beside the dtype probe (``precision.CACHE``). ``stages/pretrain.py: choose_layout`` applies it
and records ``procs``, ``threads``, ``batch_size`` and ``probe_layout_*_ms`` in the stage's metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmforge.model.checkpoint import build_model
from lmforge.runtime import create_runtime
from lmforge.training import distributed as ddp
from lmforge.training.optim import build_optimizers
from lmforge.training.precision import auto_dtype, cached_timings, fwd_bwd_ms
from lmforge.training.step import train_step

log = logging.getLogger(__name__)


def choose_procs(
    cores: int,
    measure: Callable[[str], float],
    shape: str,
    *,
    margin: float = 1.1,
    timer: Callable[[str], float] | None = None,
    cache: Path | None = None,
) -> tuple[int, dict[str, float]]:
    """``(procs, timings)`` for ``procs: auto``: ``cores`` single-threaded data-parallel processes when
    their training step is at least ``margin`` times faster than one ``cores``-thread process training
    the same global batch, else 1 (one process spawns nothing and holds one copy of the model).
    ``measure("threads")`` / ``measure("procs")`` time a step of each layout (``timer`` replaces them and
    the cache in tests); ``timings`` holds ``probe_layout_threads_ms`` and ``probe_layout_procs_ms``,
    cached per machine and ``shape``."""
    if cores < 2:
        return 1, {}
    timings = cached_timings(
        "probe_layout", f"cores={cores}|{shape}", measure, timer, cache, ("threads", "procs")
    )
    procs = cores if timings["probe_layout_procs_ms"] * margin <= timings["probe_layout_threads_ms"] else 1
    log.info(
        "procs auto: a training step takes %.0f ms as 1 process x %d threads and %.0f ms as %d processes x "
        "1 thread here: %d process(es)",
        timings["probe_layout_threads_ms"],
        cores,
        timings["probe_layout_procs_ms"],
        cores,
        procs,
    )
    return procs, timings


def layout_step_ms(layout: str, cores: int, mcfg: Any, rows: int, optim: dict, dtype: str) -> float:
    """Wall time in ms of a training step of a fresh decoder of shape ``mcfg`` trained on ``cores`` cores
    either as one process with ``cores`` threads on ``cores · rows`` rows (``layout="threads"``, in this
    process, whose thread count and torch RNG are put back) or as ``cores`` single-threaded ranks of
    ``rows`` rows each (``"procs"``, ``run_local_ranks``): the same global batch, so the same trajectory.
    ``optim`` holds ``optim.build_optimizers``' arguments after ``model``; ``dtype`` may be ``auto``
    (resolved as training resolves it, at the layout's thread count). This is ``procs: auto``'s probe
    (``choose_procs``)."""
    if layout == "procs":
        return ddp.run_local_ranks(cores, _probe_rank, mcfg, rows, optim, dtype)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        return _probe_steps(mcfg, rows * cores, cores, optim, dtype)
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)


def _probe_rank(mcfg: Any, rows: int, optim: dict, dtype: str) -> float:
    ddp.init_distributed("cpu")
    return _probe_steps(mcfg, rows, 1, optim, dtype)


def _probe_steps(mcfg: Any, rows: int, threads: int, optim: dict, dtype: str, steps: int = 4) -> float:
    """Best time in ms, the slowest rank's each step, of ``steps`` ``train_step``s on random ids after
    two warm-up steps (the first builds Muon's and AdamW's state)."""
    rt = create_runtime("cpu", dtype, 0, threads)
    raw = build_model(mcfg)
    if dtype == "auto":
        rt, _ = auto_dtype(rt, raw, mcfg.block_size, mcfg.vocab_size)
    if optim["kind"] == "auto":  # timed before DDP wraps the model
        optim = {**optim, "fwd_bwd_ms": fwd_bwd_ms(raw, rows, mcfg.block_size, mcfg.vocab_size, rt.dtype)}
    model = ddp.wrap_model(raw, "ddp")
    opts = build_optimizers(model, **optim)
    ids = torch.randint(0, mcfg.vocab_size, (rows, mcfg.block_size + 1))
    n = rows * mcfg.block_size

    def loss_sum(_: Any) -> torch.Tensor:
        logits = model(ids[:, :-1])
        return nn.functional.cross_entropy(
            logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
        )

    best = float("inf")
    for i in range(steps + 2):
        t0 = time.perf_counter()
        train_step(model, opts, [(None, n)], loss_sum, lr=1e-4, grad_clip=1.0, autocast=rt.autocast)
        dt = (time.perf_counter() - t0) * 1000
        if ddp.world()[1] > 1:
            t = torch.tensor([dt])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            dt = float(t.item())
        if i >= 2:
            best = min(best, dt)
    return best
