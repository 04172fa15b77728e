"""The optimiser and learning-rate schedules shared by every training loop.

``build_optimizer`` makes AdamW with two parameter groups (decayed, not decayed), or, with layer-wise
learning-rate decay, two per depth; ``lr_at`` is a pure function giving the learning rate of a step,
``step_lr`` is it under a loop's ``TrainOptions``, and ``set_lr`` gives it to every group (times the group's ``lr_scale``), so resuming needs no
scheduler state.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import increment_version

from lmforge.training.options import TrainOptions

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant", "wsd")
EMBEDDING_MODULES = frozenset({"tok_emb", "pos_emb", "seg_emb", "emb_norm"})
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multiplier of each named parameter under layer-wise learning-rate decay.

    Layer-wise decay (Clark et al. 2020, ELECTRA, appendix; Sun et al. 2019 for BERT fine-tuning) gives
    the layers near the input smaller steps than those near the task. With ``L`` blocks (named
    ``blocks.{i}``, ``i`` = 0 at the input: ``Decoder``'s ``blocks.{i}``, ``EncoderForPretraining``'s
    ``encoder.blocks.{i}``, a fine-tuning wrapper's ``trunk.…``):

    - block ``i``: ``decay ** (L - i)``, so the top block ``L - 1`` takes ``decay``;
    - the embeddings (``EMBEDDING_MODULES``: token, position, segment tables, the embedding norm):
      ``decay ** (L + 1)``;
    - everything else (task heads, the final norm, an untied LM head): 1. A tied LM head is the token
      table and takes the embeddings' multiplier.

    *Departure*: ELECTRA's released code puts the top block at ``decay ** 2`` and the embeddings at
    ``decay ** (L + 2)``; here each sits one step lower, the top block one step below the heads.
    ``decay`` 1 gives every parameter 1.

    Raises:
        ValueError: ``decay`` outside (0, 1], or a decay below 1 for a model with no ``blocks.{i}``.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_lr_decay must be in (0, 1], got {decay}")
    names = [n for n, _ in model.named_parameters()]
    layers = [int(m.group(1)) for n in names if (m := _BLOCK.search(n))]
    if decay < 1.0 and not layers:
        raise ValueError("layer_lr_decay < 1 needs a model whose blocks are named blocks.{i}")
    n_layer = max(layers, default=-1) + 1
    scales = {}
    for name in names:
        if m := _BLOCK.search(name):
            scales[name] = decay ** (n_layer - int(m.group(1)))
        elif EMBEDDING_MODULES.intersection(name.split(".")):
            scales[name] = decay ** (n_layer + 1)
        else:
            scales[name] = 1.0
    return scales


def param_groups(model: nn.Module, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group (per depth with layer decay).

    Decayed: every parameter with ``ndim >= 2``, i.e. the linear weight matrices and the embedding tables
    (token, learned positions; a tied output head is the token table, counted once), as nanoGPT does.
    Not decayed: ``ndim < 2``, i.e. norm gains and biases; shrinking them towards zero has no
    regularising purpose (a norm gain of zero silences a channel).

    ``layer_lr_decay`` < 1 splits both groups by ``layer_lr_scales``: one group per (multiplier, decayed
    or not), embeddings first, each with its ``lr_scale`` (``set_lr`` applies it). At 1 the two groups
    are exactly the plain ones.
    """
    scales = layer_lr_scales(model, layer_lr_decay)
    if layer_lr_decay == 1.0:
        decay, no_decay = [], []
        for _, p in model.named_parameters():  # named_parameters() yields a tied tensor once
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((scales[name], p.ndim >= 2), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
        for (scale, decayed), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    layer_lr_decay: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) over ``param_groups(model, weight_decay, layer_lr_decay)``.

    Weight decay is decoupled: each step multiplies decayed weights by ``1 - lr * weight_decay``
    outside the adaptive update (not an L2 term in the loss; ``lr`` is the group's, so layer-wise decay
    shrinks the lower layers' weight decay too, as in ELECTRA). Uses the fused kernel when the
    parameters' device supports it (CPU does in torch >= 2.4), else the multi-tensor ``foreach`` path.
    Each group starts at ``lr`` times its ``lr_scale``; a loop then calls ``set_lr`` every step.

    Raises:
        ValueError: a negative lr, weight decay or eps, betas outside [0, 1), no trainable parameter, or
            a ``layer_lr_decay`` that ``layer_lr_scales`` refuses.
    """
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    groups = param_groups(model, weight_decay, layer_lr_decay)
    counts = {True: [0, 0], False: [0, 0]}  # decayed (ndim >= 2)? → [tensors, params]
    for p in (p for g in groups for p in g["params"]):
        counts[p.ndim >= 2][0] += 1
        counts[p.ndim >= 2][1] += p.numel()
    if counts[True][1] + counts[False][1] == 0:
        raise ValueError("model has no trainable parameters")
    logger.info(
        "AdamW: %d decayed tensors (%d params), %d non-decayed tensors (%d params)%s",
        *counts[True],
        *counts[False],
        f"; layer-wise lr decay {layer_lr_decay}: lr x {sorted({g['lr_scale'] for g in groups})}"
        if layer_lr_decay < 1
        else "",
    )
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    try:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except RuntimeError:  # a device or dtype the fused kernel does not cover
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
    optimizer.register_step_post_hook(_bump_versions)
    return optimizer


def _bump_versions(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Mark every parameter as changed after a fused step. The fused kernel writes the weights without
    bumping their version counters (torch 2.13), so ``model.decode_weights.DecodeWeights`` — which
    rebuilds its fused weight copies only when a counter moved — kept sampling from the weights it saw
    first: GRPO and PPO rollouts came from the initial policy while the loss scored them under the
    trained one."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                increment_version(p)


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


def step_lr(opts: TrainOptions, step: int, max_steps: int | None = None) -> float:
    """``lr_at`` under the schedule options of a training loop (``lr``, ``warmup`` — ``warmup_ratio`` or
    ``warmup_steps`` —, ``schedule``, ``min_lr_ratio``), in a schedule ``max_steps`` long (by default
    ``opts.max_steps``; pretraining's ``schedule_clock: time`` passes a projected length)."""
    return lr_at(
        step,
        max_steps=opts.max_steps if max_steps is None else max_steps,
        base_lr=opts.lr,
        warmup_steps=opts.warmup,
        schedule=opts.schedule,
        min_lr_ratio=opts.min_lr_ratio,
    )


def scaled_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """The learning rate ``optimizer``'s groups take when the schedule says ``lr``: ``lr`` times the
    optimiser's ``lr_scale`` attribute (1 unless ``build_optimizers`` set one, e.g. for ``muon_lr``; an
    attribute, not a param-group key, so checkpoints load whatever ``muon_lr`` the resuming run has)."""
    return lr * getattr(optimizer, "lr_scale", 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate for a step whose schedule says ``lr``: ``scaled_lr(optimizer,
    lr)`` times the group's own ``lr_scale`` (layer-wise decay, ``param_groups``; 1 when absent)."""
    base = scaled_lr(optimizer, lr)
    for group in optimizer.param_groups:
        group["lr"] = base * group.get("lr_scale", 1.0)


def build_optimizers(
    model: nn.Module,
    kind: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    ns_steps: int = 5,
    muon_lr: float = 0.0,
    muon_momentum: float = 0.95,
    ns_dtype: str = "bf16",
    fwd_bwd_ms: float = 0.0,
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
    ``muon_momentum`` is Muon's (Nesterov) momentum, 0.95 as torch. ``ns_dtype`` is the precision of
    the Newton–Schulz iterations: ``bf16`` (torch's), ``fp32``, or ``auto`` — the faster on this machine
    for these matrices (``training.precision.choose_ns_dtype``, from the ranks' mean timings), with the
    timings in the Muon optimiser's ``probe`` attribute for the stage's metrics. ``kind="auto"`` is Muon
    unless its Newton–Schulz work, at that precision and shared over the ranks, costs more than
    ``precision.MUON_MAX_COST`` times a forward + backward pass of a rank's batch (``fwd_bwd_ms``, the
    same figure on every rank: ``precision.fwd_bwd_ms`` gives the ranks' mean), then AdamW alone
    (``precision.choose_optimizer``; the timings and the choice in the first optimiser's ``probe``).

    Raises:
        ValueError: an unknown ``kind``, or the arguments ``build_optimizer`` refuses.
    """
    if kind not in ("adamw", "muon", "auto"):
        raise ValueError(f"unknown optimizer {kind!r}; valid: adamw, muon, auto")
    if kind == "adamw":
        return [build_optimizer(model, lr, weight_decay, betas)]
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
    from lmforge.training import distributed as ddp

    probe: dict[str, float] = {}
    if ns_dtype == "auto" or kind == "auto":
        from lmforge.training.precision import choose_ns_dtype

        measured, probe = choose_ns_dtype([tuple(p.shape) for p in hidden], ns_steps)  # the ranks' mean
        if ns_dtype == "auto":
            ns_dtype = measured
            probe["ns_bf16"] = float(ns_dtype == "bf16")
    if kind == "auto":
        from lmforge.training.precision import choose_optimizer

        if not fwd_bwd_ms > 0:
            raise ValueError("optimizer auto needs fwd_bwd_ms, the time of a forward + backward pass")
        kind, record = choose_optimizer(fwd_bwd_ms, probe[f"probe_ns_{ns_dtype}_ms"], ddp.world()[1])
        probe.update(record)
        if kind == "adamw":
            adamw = build_optimizer(model, lr, weight_decay, betas)
            adamw.probe = probe
            return [adamw]
    muon = ShardedMuon(
        hidden,
        lr=lr,
        weight_decay=weight_decay,
        momentum=muon_momentum,
        adjust_lr_fn="match_rms_adamw",
        ns_steps=ns_steps,
        ns_dtype=ns_dtype,
    )
    muon.probe = probe
    if muon_lr > 0 and lr > 0:
        muon.lr_scale = muon_lr / lr
        for group in muon.param_groups:
            group["lr"] = muon_lr
    logger.info(
        "Muon: %d matrices (%d params); the rest on AdamW", len(hidden), sum(p.numel() for p in hidden)
    )
    return [muon, build_optimizer(rest, lr, weight_decay, betas)]
