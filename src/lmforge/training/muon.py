"""Muon with its Newton–Schulz work shared out over data-parallel ranks.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) orthogonalises each hidden
matrix's momentum with a few Newton–Schulz iterations. On a small model that arithmetic costs about as
much as the forward and backward pass (docs/performance.md), and under plain DDP every rank repeats it
for every matrix. :class:`ShardedMuon` gives each matrix to one rank (matrix ``i`` to rank
``i % world_size``): every rank updates every momentum buffer (cheap, so optimiser state stays identical
on all ranks and checkpoints stay full), only the owner orthogonalises and applies the update, and each
rank then broadcasts its updated matrices as one flat buffer. This is the distributed layout of
Moonlight's Muon (Liu et al. 2025, https://arxiv.org/abs/2502.16982), for DDP.

Alone (no process group) and with ``ns_dtype="bf16"`` it is exactly ``torch.optim.Muon``: it calls
torch's own Newton–Schulz and learning-rate adjustment, so single-process results match it bit for bit
(tested), and with N ranks every parameter ends each step equal to what one process computes.
``ns_dtype="fp32"`` runs the same iterations in fp32 (``newton_schulz``), for a CPU where bf16 matmuls
are slow (``training.precision.choose_ns_dtype`` measures which).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.optim import Muon
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz


def newton_schulz(
    grad: torch.Tensor,
    coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
    steps: int = 5,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """The quintic Newton–Schulz orthogonalisation of ``grad`` (2-D) as ``torch.optim.Muon`` computes it,
    in ``dtype``: torch's own function for bf16 (bit for bit), the same iterations in fp32 otherwise."""
    if dtype == torch.bfloat16:
        return _zeropower_via_newtonschulz(grad, coefficients, steps, eps)
    a, b, c = coefficients
    x = grad.to(dtype)
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


class ShardedMuon(Muon):
    """``torch.optim.Muon`` whose Newton–Schulz iterations are split over the ranks of a DDP job.

    Takes ``torch.optim.Muon``'s arguments, plus ``ns_dtype`` (``"bf16"`` as torch, or ``"fp32"``).
    Requires every rank to hold the same parameters in the same order with the same (all-reduced)
    gradients, which DDP guarantees.
    """

    def __init__(self, params, *args, ns_dtype: str = "bf16", **kwargs) -> None:
        if ns_dtype not in ("bf16", "fp32"):
            raise ValueError(f"ns_dtype must be bf16 or fp32, got {ns_dtype!r}")
        super().__init__(params, *args, **kwargs)
        self.ns_dtype = torch.bfloat16 if ns_dtype == "bf16" else torch.float32

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch's signature
        """One optimisation step (``closure`` as torch optimisers take it)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            for i, p in enumerate(params):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                if i % world != rank:
                    continue
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
                )
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
            if distributed:
                for owner in range(world):  # each rank's updated matrices, as one flat buffer
                    mine = params[owner::world]
                    if not mine:
                        continue
                    if owner == rank:
                        flat = torch.cat([p.reshape(-1) for p in mine])
                    else:
                        flat = torch.empty(
                            sum(p.numel() for p in mine), dtype=mine[0].dtype, device=mine[0].device
                        )
                    dist.broadcast(flat, src=owner)
                    if owner != rank:
                        offset = 0
                        for p in mine:
                            p.copy_(flat[offset : offset + p.numel()].view_as(p))
                            offset += p.numel()
        return loss
