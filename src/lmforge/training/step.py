"""One training step, shared by every loop: token-weighted gradient accumulation, then one optimiser step.

Pretraining (``stages/pretrain.py``), fine-tuning and alignment (``training/finetune.fit``) and the scaling
sweep (``scaling/points.py``) all call ``train_step``; ``EarlyStopping`` is the one patience rule of
pretraining and fine-tuning.

Normalisation rule: the loss of an optimiser step is the sum of the loss terms (supervised tokens, or
examples) over the whole accumulated batch *on every rank*, divided by that batch's global count. So each
micro-batch backpropagates ``loss_sum · world / global_total``, where ``global_total`` is counted over all
micro-batches and all data-parallel ranks (one all-reduce) before the first backward; DDP then averages
gradients over the ``world`` ranks. Any split into ranks × micro-batches × accumulation steps gives the
same gradient, however ragged the masks (averaging per-micro-batch means would over-weight micro-batches
with few supervised tokens; torchtune #2307 is that bug).

``train_step`` then takes the optimiser step, in this order: the schedule's learning rate into every
group (``optim.set_lr``) → clip the global gradient norm → the L1 penalty's gradient ``l1 · sign(w)`` on
the trainable matrices → ``step()`` and ``zero_grad`` on every optimiser → the step's mean loss (averaged
over ranks) checked finite, else ``FloatingPointError``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.training import distributed as ddp
from lmforge.training.optim import set_lr

IGNORE_INDEX = -100

MicroBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (idx, targets, mask)


def _supervised(targets: torch.Tensor, mask: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """Targets ``[B, T]`` with every unsupervised position (mask False) set to ``ignore_index``."""
    if mask is None:
        return targets
    if mask.dtype != torch.bool or mask.shape != targets.shape:
        raise ValueError(
            f"mask must be a bool tensor shaped like targets {tuple(targets.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    return targets.masked_fill(~mask, ignore_index)


def supervised_tokens(
    targets: torch.Tensor, mask: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> int:
    """Number of positions of ``targets`` ``[B, T]`` that carry a loss (mask True, not ``ignore_index``)."""
    return int((_supervised(targets, mask, ignore_index) != ignore_index).sum())


def token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy, computed in fp32, and the number of tokens it covers.

    Args:
        logits: ``[B, T, V]`` scores (any float dtype).
        targets: ``[B, T]`` token ids; ``ignore_index`` marks positions without a loss.
        mask: optional ``[B, T]`` bool, True where the position is supervised (e.g. assistant tokens).

    Returns:
        ``(loss_sum, n_tokens)``: a scalar tensor (0 when nothing is supervised) and an int.

    Raises:
        ValueError: shapes that do not line up, or a mask that is not bool.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and targets [B, T], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    targets = _supervised(targets, mask, ignore_index)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),  # [B*T, V]
        targets.reshape(-1),  # [B*T]
        ignore_index=ignore_index,
        reduction="sum",
    )
    return loss_sum, int((targets != ignore_index).sum())


def weighted_backward(loss_sum: torch.Tensor, total_tokens: float, world_size: int = 1) -> None:
    """Backpropagate one micro-batch's ``loss_sum`` divided by the accumulated batch's token count.

    ``total_tokens`` counts every rank's tokens; ``world_size`` ranks whose gradients DDP averages each
    scale by ``world_size``, so the average is the global token mean. ``total_tokens`` of 0 (nothing
    supervised anywhere) backpropagates the zero loss unscaled.
    """
    (loss_sum * world_size / max(total_tokens, 1)).backward()


@dataclass
class StepStats:
    """What one ``train_step`` did: the mean loss per loss term over the global batch, the global loss-term
    count, the gradient norm before clipping and the learning rate it stepped with."""

    loss: float
    tokens: float
    grad_norm: float
    lr: float


def train_step(
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    micro_batches: Sequence[tuple[Any, int]],
    loss_sum: Callable[[Any], torch.Tensor],
    *,
    lr: float,
    grad_clip: float = 0.0,
    l1: float = 0.0,
    step: int = 0,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> StepStats:
    """One optimiser step over ``micro_batches`` (the rule is in the module docstring).

    Args:
        model: the model being trained, DDP-wrapped when distributed (its ``no_sync`` defers the gradient
            all-reduce to the last micro-batch); only parameters that require grad are clipped and
            penalised.
        optimizers: stepped in order (e.g. ``[Muon, AdamW]``); each group's lr becomes ``lr`` times its
            scales (``optim.set_lr``).
        micro_batches: ``(batch, n)`` pairs, ``n`` the loss terms (tokens or examples) of ``batch`` on
            this rank.
        loss_sum: the summed loss of one batch, a scalar tensor (run under ``autocast``).
        lr: the schedule's learning rate for this step.
        grad_clip: clip the global gradient norm to this (0 = off; the norm is still measured).
        l1: adds ``l1 · Σ|w|`` over trainable matrices to the loss, as its gradient ``l1 · sign(w)``.
        step: steps done before this one (for the error message).
        autocast: a context-manager factory for mixed precision (``Runtime.autocast``).

    Raises:
        FloatingPointError: the step's loss is NaN or infinite.
    """
    _, world_size = ddp.world()
    total = ddp.all_reduce_sum(sum(n for _, n in micro_batches))
    local = 0.0
    for i, (batch, _) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast():
                summed = loss_sum(batch)
            weighted_backward(summed, total, world_size)
        local += float(summed.detach())
    for o in optimizers:
        set_lr(o, lr)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf))
    if l1 > 0:
        with torch.no_grad():
            for p in params:
                if p.ndim >= 2 and p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=l1)
    for o in optimizers:
        o.step()
        o.zero_grad(set_to_none=True)
    loss = ddp.all_reduce_sum(local) / max(total, 1)
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss became {loss} at step {step + 1}; lower the learning rate (lr={lr:g})"
        )
    return StepStats(loss=loss, tokens=total, grad_norm=grad_norm, lr=lr)


@dataclass
class EarlyStopping:
    """Track the best value of a monitored metric; ``stop`` after ``patience`` evaluations without an
    improvement larger than ``min_delta`` (``patience`` 0 never stops). Its state (``best``, ``bad``) is
    two numbers, which pretraining keeps in its checkpoints."""

    mode: str = "min"
    patience: int = 0
    min_delta: float = 0.0
    best: float = math.nan
    bad: int = 0

    def update(self, value: float) -> bool:
        """Record one evaluation; True when it is the best so far."""
        better = (
            math.isnan(self.best)
            or (self.mode == "min" and value < self.best - self.min_delta)
            or (self.mode == "max" and value > self.best + self.min_delta)
        )
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return better

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience
