"""The optimiser and learning-rate schedules shared by every training loop.

``build_optimizer`` makes AdamW with two parameter groups; ``lr_at`` is a pure function giving the
learning rate of a step, so a loop sets ``group["lr"]`` itself and resuming needs no scheduler state.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Decayed: every parameter with ``ndim >= 2``, i.e. the linear weight matrices and the embedding tables
    (token, learned positions; a tied output head is the token table, counted once), as nanoGPT does.
    Not decayed: ``ndim < 2``, i.e. norm gains and biases; shrinking them towards zero has no
    regularising purpose (a norm gain of zero silences a channel).
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() yields a tied tensor once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) over ``param_groups(model, weight_decay)``.

    Weight decay is decoupled: each step multiplies decayed weights by ``1 - lr * weight_decay``
    outside the adaptive update (not an L2 term in the loss). Uses the fused kernel when the parameters'
    device supports it (CPU does in torch >= 2.4), else the multi-tensor ``foreach`` path.

    Raises:
        ValueError: a negative lr, weight decay or eps, betas outside [0, 1), or no trainable parameter.
    """
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    groups = param_groups(model, weight_decay)
    n_decay, n_no_decay = (sum(p.numel() for p in g["params"]) for g in groups)
    if n_decay + n_no_decay == 0:
        raise ValueError("model has no trainable parameters")
    logger.info(
        "AdamW: %d decayed tensors (%d params), %d non-decayed tensors (%d params)",
        len(groups[0]["params"]),
        n_decay,
        len(groups[1]["params"]),
        n_no_decay,
    )
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except RuntimeError:  # a device or dtype the fused kernel does not cover
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def lr_at(
    step: int,
    *,
    max_steps: int,
    base_lr: float,
    warmup_steps: int,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate of (0-based) ``step`` in a run of ``max_steps`` steps.

    Warmup (Goyal et al. 2017): linear, ``base_lr * (step + 1) / warmup_steps`` for
    ``step < warmup_steps``, so the first step already moves and step ``warmup_steps - 1`` reaches
    ``base_lr``. After it, with ``min_lr = min_lr_ratio * base_lr``:

    - ``cosine``: half a cosine from base_lr down to min_lr (Loshchilov & Hutter 2017, SGDR, no restarts).
    - ``linear``: straight line from base_lr down to min_lr.
    - ``constant``: base_lr (min_lr_ratio unused).
    - ``wsd``: warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): base_lr until the final
      ``decay_fraction`` of ``max_steps``, then a straight line down to min_lr.

    Decays reach min_lr exactly at ``step == max_steps``; later steps stay there.

    Raises:
        ValueError: a negative step, ``max_steps < 1``, ``warmup_steps`` outside [0, max_steps], a negative
            base_lr, an unknown schedule, ``min_lr_ratio`` outside [0, 1] or ``decay_fraction``
            outside (0, 1].
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if not 0 <= warmup_steps <= max_steps:
        raise ValueError(f"warmup_steps must be in [0, max_steps={max_steps}], got {warmup_steps}")
    if not base_lr >= 0:
        raise ValueError(f"base_lr must be >= 0, got {base_lr}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")

    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    min_lr = min_lr_ratio * base_lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, max_steps - max(1, round(decay_fraction * max_steps)))
    else:
        decay_start = warmup_steps
    if step < decay_start:
        return base_lr
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))  # in [0, 1]
    if schedule == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr + (min_lr - base_lr) * progress  # linear and the decay phase of wsd


def scaled_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """The learning rate ``optimizer``'s groups take when the schedule says ``lr``: ``lr`` times the
    optimiser's ``lr_scale`` attribute (1 unless ``build_optimizers`` set one, e.g. for ``muon_lr``; an
    attribute, not a param-group key, so checkpoints load whatever ``muon_lr`` the resuming run has)."""
    return lr * getattr(optimizer, "lr_scale", 1.0)


def build_optimizers(
    model: nn.Module,
    kind: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    ns_steps: int = 5,
    muon_lr: float = 0.0,
    muon_momentum: float = 0.95,
) -> list[torch.optim.Optimizer]:
    """The optimisers of a training loop: ``[AdamW]``, or ``[Muon, AdamW]`` for ``kind="muon"``.

    Muon (Jordan et al. 2024; ``torch.optim.Muon``) orthogonalises the momentum of each hidden weight
    matrix with Newton–Schulz iterations. It takes the 2-D weights inside the transformer blocks; the
    embeddings, the output head, norms and biases stay on AdamW, as its authors recommend. Its learning
    rate is rescaled to match AdamW's update RMS (``adjust_lr_fn="match_rms_adamw"``, Liu et al. 2025,
    Moonlight), so one ``lr`` and one schedule serve both. ``ns_steps`` Newton–Schulz iterations (5 as
    torch; 3 costs 40% less). Under DDP the iterations are shared out over the ranks
    (``training/muon.py``). ``muon_lr`` > 0 gives Muon's matrices their own peak learning rate: its
    optimiser carries ``lr_scale = muon_lr / lr``, which a loop applies with ``scaled_lr(optimizer, lr)``.
    ``muon_momentum`` is Muon's (Nesterov) momentum, 0.95 as torch.

    Raises:
        ValueError: an unknown ``kind``, or the arguments ``build_optimizer`` refuses.
    """
    if kind == "adamw":
        return [build_optimizer(model, lr, weight_decay, betas)]
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r}; valid: adamw, muon")
    hidden = [
        p for n, p in model.named_parameters() if p.requires_grad and p.ndim == 2 and ".blocks." in f".{n}"
    ]
    ids = {id(p) for p in hidden}
    rest = nn.ParameterList([p for p in model.parameters() if p.requires_grad and id(p) not in ids])
    from lmforge.training.muon import ShardedMuon  # torch.optim.Muon, its work split over DDP ranks

    if muon_lr < 0:
        raise ValueError(f"muon_lr must be >= 0, got {muon_lr}")
    if not 0 <= muon_momentum < 1:
        raise ValueError(f"muon_momentum must be in [0, 1), got {muon_momentum}")
    muon = ShardedMuon(
        hidden,
        lr=lr,
        weight_decay=weight_decay,
        momentum=muon_momentum,
        adjust_lr_fn="match_rms_adamw",
        ns_steps=ns_steps,
    )
    if muon_lr > 0 and lr > 0:
        muon.lr_scale = muon_lr / lr
        for group in muon.param_groups:
            group["lr"] = muon_lr
    logger.info(
        "Muon: %d matrices (%d params); the rest on AdamW", len(hidden), sum(p.numel() for p in hidden)
    )
    return [muon, build_optimizer(rest, lr, weight_decay, betas)]
