"""Data-parallel training behind one call: DDP by default, FSDP2 (``fully_shard`` per block) on request.

Launched by ``torchrun --nproc_per_node=N`` (which sets RANK / WORLD_SIZE / LOCAL_RANK), the same
training program runs on every rank: :func:`init_distributed` joins the process group (gloo on CPU,
NCCL on CUDA), :func:`wrap_model` wraps the model, and the loop stays the same. Alone (no torchrun)
every function here is a no-op, so there is one code path for one process and many.

Gradient scale: DDP and FSDP2 *average* gradients over ranks. The token-weighted loss of a step is
``sum(loss over all supervised tokens of all ranks) / global token count``, so each rank backpropagates
``loss_sum * world_size / global_tokens`` (``training.step.weighted_backward``); averaging then gives exactly the
single-process gradient of the whole global batch.

Checkpoints hold full (unsharded) state dicts, gathered with ``torch.distributed.checkpoint.state_dict``,
so a checkpoint written by 2 FSDP ranks loads in one process and vice versa.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from the process group, else torchrun's env, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: str) -> bool:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1; returns True if distributed."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def wrap_model(model: nn.Module, strategy: str) -> nn.Module:
    """Wrap ``model`` for data parallelism when distributed; return it unchanged otherwise.

    Args:
        strategy: "ddp" (DistributedDataParallel) or "fsdp" (FSDP2: ``fully_shard`` on each block of
            ``model.blocks``, then on the whole model).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if not (dist.is_available() and dist.is_initialized()):
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place, so it is its own module)."""
    return getattr(model, "module", model)


def all_reduce_sum(value: float | int) -> float:
    """Sum a number over ranks (identity when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def full_state_dicts(model: nn.Module, optimizer: Any) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts (a collective under FSDP: call on every rank).

    ``optimizer`` is one optimizer or a list of them (e.g. Muon + AdamW); their states are keyed by
    parameter name, so a checkpoint does not depend on how parameters were grouped.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # with cpu_offload only rank 0 receives the gathered tensors (it is the rank that writes them)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=dist.is_available() and dist.is_initialized())
    return get_state_dict(unwrap(model), optimizer, options=opts)


def load_full_state_dicts(model: nn.Module, optimizer: Any, model_sd: dict, optim_sd: dict) -> None:
    """Load unsharded state dicts into a (possibly sharded) model and its optimizer, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(full_state_dict=True, strict=True)
    set_state_dict(
        unwrap(model), optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=opts
    )


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_local_ranks(n: int, fn: Callable[..., Any], *args: Any, log_file: Path | None = None) -> Any:
    """Run ``fn(*args)`` on ``n`` processes of this machine joined as one gloo job; return rank 0's value.

    This is what ``procs: N`` in a training config does without ``torchrun``: on a CPU, small models
    run faster as N single-threaded data-parallel ranks than as one process with N threads (measured
    in docs/performance.md), because their matmuls are too small to split well across threads. Each
    rank is a fresh ``spawn``-ed interpreter with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT on loopback), so the training code runs exactly as under ``torchrun``. A rank dies
    with its parent (Linux ``PR_SET_PDEATHSIG``), so a killed command leaves no orphan ranks behind.

    Raises:
        the exception rank 0 (or the first failing rank) raised, re-raised here; ``RuntimeError`` when a
        rank exits abnormally without one (e.g. killed).
    """
    import multiprocessing as mp
    import socket

    with socket.socket() as s:  # a free loopback port for the rendezvous (closed before the ranks bind it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    level = logging.getLogger("lmforge").getEffectiveLevel()
    ranks = [
        ctx.Process(target=_rank_main, args=(r, n, port, level, log_file, queue, fn, args), daemon=False)
        for r in range(n)
    ]
    for p in ranks:
        p.start()
    results: dict[int, tuple[bool, Any]] = {}

    def drain() -> None:  # read while waiting: a rank blocked writing a large value never exits
        while not queue.empty():
            rank, ok, value = queue.get()
            results.setdefault(rank, (ok, value))

    try:
        while any(p.is_alive() for p in ranks):
            for p in ranks:
                p.join(timeout=0.2)
            drain()
            if any(p.exitcode not in (None, 0) for p in ranks):
                break
    finally:
        drain()
        for p in ranks:
            if p.is_alive():
                p.terminate()
            p.join()
    error = next((value for ok, value in results.values() if not ok), None)  # the first to arrive
    if error is not None:
        raise error
    bad = [(r, p.exitcode) for r, p in enumerate(ranks) if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"local data-parallel rank {bad[0][0]} exited with code {bad[0][1]}")
    return results.get(0, (True, None))[1]


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    level: int,
    log_file: Path | None,
    queue: Any,
    fn: Callable[..., Any],
    args: tuple,
) -> None:
    """Body of one rank started by :func:`run_local_ranks`."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):  # die with the parent, even on SIGKILL
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from lmforge.log import add_file_handler, setup_logging

    setup_logging(quiet=level > logging.INFO or rank != 0, verbose=level < logging.INFO)
    if log_file is not None and rank == 0:
        add_file_handler(log_file)
    try:
        value = fn(*args)
        queue.put((rank, True, value if rank == 0 else None))
    except BaseException as e:  # hand the error to the parent, which re-raises it
        try:
            queue.put((rank, False, e))
        except Exception:  # an exception that does not pickle
            queue.put((rank, False, RuntimeError(f"rank {rank}: {type(e).__name__}: {e}")))
        raise SystemExit(1) from None
    finally:
        shutdown()
