"""Data-parallel training behind one call: DDP by default, FSDP2 (``fully_shard`` per block) on request.

Launched by ``torchrun --nproc_per_node=N`` (which sets RANK / WORLD_SIZE / LOCAL_RANK), the same
training program runs on every rank: :func:`init_distributed` joins the process group (gloo on CPU,
NCCL on CUDA), :func:`wrap_model` wraps the model, and the loop stays the same. Alone (no torchrun)
every function here is a no-op, so there is one code path for one process and many.

Gradient scale: DDP and FSDP2 *average* gradients over ranks. The token-weighted loss of a step is
``sum(loss over all supervised tokens of all ranks) / global token count``, so each rank backpropagates
``loss_sum * world_size / global_tokens`` (see :func:`loss_scale`); averaging then gives exactly the
single-process gradient of the whole global batch.

Checkpoints hold full (unsharded) state dicts, gathered with ``torch.distributed.checkpoint.state_dict``,
so a checkpoint written by 2 FSDP ranks loads in one process and vice versa.
"""

from __future__ import annotations

import logging
import os
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


def loss_scale(global_tokens: float) -> float:
    """Factor to multiply a rank's summed loss by so averaged gradients equal the global token mean."""
    _, world_size = world()
    return world_size / max(global_tokens, 1.0)


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
