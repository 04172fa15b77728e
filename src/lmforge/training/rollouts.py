"""GRPO's rollouts: sample groups of replies through the inference engine, score them, and the loss.

- ``rollout`` samples ``G`` completions per prompt (GRPO and PPO; PPO's own pieces: ``training.ppo``),
  scores them with a reward function and keeps the sampling policy's and the reference's
  log-probabilities; ``Rollout`` holds the batch.
- ``informative_groups`` / ``keep_groups``: DAPO's dynamic sampling (Yu et al. 2025).
- ``grpo_loss_sum``: the clipped surrogate plus the k3 KL (``training.losses``), summed over the
  completion tokens (GRPO, Shao et al. 2024, eq. 3).

Shape notation: B batch (rows), T tokens, P prompts, G samples per prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.training.logprobs import Reference, token_logprobs
from lmforge.training.losses import clipped_policy_loss, group_advantages, kl_k3


@dataclass
class Rollout:
    """One GRPO batch: ``P`` prompts × ``G`` sampled completions as ``lm_batch`` rows (``B = P·G``).

    ``m`` marks the completion tokens (the ``<|end|>`` a row stopped on included); ``old_logp`` and
    ``ref_logp`` ``[B, T]`` are the sampling policy's and the reference's log-probabilities of ``y``.
    """

    x: torch.Tensor  # [B, T]
    y: torch.Tensor  # [B, T]
    m: torch.Tensor  # [B, T] bool
    advantages: torch.Tensor  # [B]
    rewards: torch.Tensor  # [P, G]
    old_logp: torch.Tensor  # [B, T]
    ref_logp: torch.Tensor | None  # [B, T], None without a KL term
    completions: list[Any] = field(repr=False)  # [B] inference.engine.Completion


def rollout(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    reward: Callable[[int, Any], float],
    *,
    group_size: int,
    params: Any,
    pad_id: int,
    reference: Reference | None = None,
    scale_rewards: bool = True,
) -> Rollout:
    """Sample ``group_size`` completions per prompt with ``engine`` and score them (GRPO, Shao et al. 2024).

    ``reward(p, completion)`` scores a ``Completion`` of prompt ``p``. Completions that ended on a stop
    token get that token back (it is part of what the policy chose) when ``params.stop_ids`` holds
    exactly one id and no stop strings are set. ``params`` is the engine's
    ``SamplingParams``; row ``p·G + g`` is sample ``g`` of prompt ``p``. ``scale_rewards``: see
    ``group_advantages``'s ``scale``.
    """
    from lmforge.training.batches import lm_batch

    model = engine.model
    rows = [list(p) for p in prompts for _ in range(group_size)]
    completions = engine.generate(rows, params)
    stop = sorted(params.stop_ids)
    examples, scores = [], []
    for i, (prompt, c) in enumerate(zip(rows, completions)):
        ended = c.finish_reason == "stop" and len(stop) == 1 and not params.stop  # on the stop token
        ids = c.ids + stop if ended else c.ids
        prompt = prompt[-(engine.block_size - 1) :]
        limit = engine.block_size + 1
        examples.append(((prompt + ids)[:limit], ([False] * len(prompt) + [True] * len(ids))[:limit]))
        scores.append(float(reward(i // group_size, c)))
    device = next(model.parameters()).device
    x, y, m = (t.to(device) for t in lm_batch(examples, pad_id))
    rewards = torch.tensor(scores, device=device).view(len(prompts), group_size)
    with torch.no_grad():
        old = token_logprobs(model, x, y)
    ref = reference.token_logprobs(x, y) if reference is not None else None
    adv = group_advantages(rewards, scale=scale_rewards).reshape(-1)
    return Rollout(x, y, m, adv, rewards, old, ref, completions)


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``[P]`` bool: the groups of ``rewards [P, G]`` whose rewards are not all equal — the only ones
    with a non-zero advantage (DAPO's dynamic-sampling filter, Yu et al. 2025)."""
    return rewards.amax(dim=1) > rewards.amin(dim=1)


def keep_groups(rollouts: Sequence[Rollout], group_size: int, limit: int) -> Rollout | None:
    """DAPO's dynamic sampling (Yu et al. 2025): the first ``limit`` informative groups
    (``informative_groups``) of ``rollouts`` as one rollout, right-padded to its longest row; ``None``
    when no group has signal. Advantages stay as each group computed them; since the step divides by
    its completion tokens, dropping zero-advantage groups makes every token of the step carry signal."""
    parts: list[tuple[Rollout, torch.Tensor]] = []
    left = limit
    for ro in rollouts:
        groups = informative_groups(ro.rewards).nonzero().flatten()[:left]
        if len(groups):
            parts.append((ro, groups))
            left -= len(groups)
    if not parts:
        return None
    T = max(ro.x.shape[1] for ro, _ in parts)

    def rows(ro: Rollout, groups: torch.Tensor) -> torch.Tensor:
        return (groups[:, None] * group_size + torch.arange(group_size)).flatten()

    def cat(name: str, pad: Any) -> torch.Tensor:
        out = []
        for ro, groups in parts:
            t = getattr(ro, name)[rows(ro, groups)]
            out.append(F.pad(t, (0, T - t.shape[1]), value=pad))
        return torch.cat(out)

    ref = cat("ref_logp", 0.0) if parts[0][0].ref_logp is not None else None
    return Rollout(
        cat("x", 0),
        cat("y", 0),
        cat("m", False),
        torch.cat([ro.advantages[rows(ro, g)] for ro, g in parts]),
        torch.cat([ro.rewards[g] for ro, g in parts]),
        cat("old_logp", 0.0),
        ref,
        [ro.completions[i] for ro, g in parts for i in rows(ro, g).tolist()],
    )


def grpo_loss_sum(
    model: nn.Module, ro: Rollout, *, clip_eps: float, beta: float
) -> tuple[torch.Tensor, float]:
    """``(summed per-token GRPO loss over the completion tokens, mean per-token KL to the reference)``.

    Per token: the clipped surrogate with the sequence's group advantage, plus ``beta`` × ``kl_k3``
    (GRPO eq. 3). Departure from the paper: tokens are summed here and divided by the step's total count
    of completion tokens (``training.step``'s token weighting, as DAPO and Dr. GRPO do) instead of
    averaging each sequence first, so long and short completions weigh by their tokens.
    """
    logp = token_logprobs(model, ro.x, ro.y)  # [B, T]
    loss = clipped_policy_loss(logp, ro.old_logp, ro.advantages, clip_eps)
    kl = torch.zeros((), device=logp.device)
    n = ro.m.sum().clamp(min=1)
    if ro.ref_logp is not None:
        per_token = kl_k3(logp, ro.ref_logp)
        kl = (per_token.detach() * ro.m).sum() / n
        if beta > 0:
            loss = loss + beta * per_token
    return (loss * ro.m).sum(), float(kl)
