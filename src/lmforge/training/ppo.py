"""PPO-RLHF (Ouyang et al. 2022, after Ziegler et al. 2019) as small pieces the ``align.ppo`` stage runs.

- ``kl_shaped_rewards``: per-token rewards, the KL penalty to the reference plus the sequence's score
  on its last token;
- ``gae``: generalised advantage estimation (Schulman et al. 2016);
- ``clipped_value_loss``: PPO's clipped value loss (Schulman et al. 2017);
- ``PolicyWithValue``: a decoder policy with a value head (``ScalarHead(pooling="none")``) on its final
  hidden states, one trunk pass for log-probabilities and values;
- ``ppo_batch``: one rollout — replies sampled through the engine (``training.rollouts.rollout``), scored
  by any function (a reward model, or a plain function in tests), KL-shaped, GAE advantages whitened
  over the batch's reply tokens;
- ``ppo_loss_sum``: the clipped surrogate with per-token advantages plus ``vf_coef`` × the value loss,
  summed over reply tokens (``finetune.fit`` divides by the step's token count).

Shape notation: B rows (prompts × samples), T tokens, D n_embd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.training.logprobs import Reference
from lmforge.training.losses import clipped_policy_loss
from lmforge.training.rollouts import Rollout, rollout


def kl_shaped_rewards(
    score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards ``[B, T]`` of RLHF-PPO (Ouyang et al. 2022; Ziegler et al. 2019): ``−kl_coef ·
    (logp − ref_logp)`` on every completion token, plus the sequence's reward-model ``score`` ``[B]`` on
    its last completion token; zero outside ``mask``."""
    rewards = -kl_coef * (logp - ref_logp) * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).amax(dim=1)  # [B]; -1 for a row without completion tokens
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] += score[rows]
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over the masked tokens of each row.

    ``rewards``, ``values`` ``[B, T]``; ``mask`` ``[B, T]`` marks one contiguous span per row (the
    completion); the value after its last token is 0 (the episode ends). Returns ``(advantages,
    returns = advantages + values)``, both zero outside ``mask``.
    """
    m = mask.to(values.dtype)
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    next_m = torch.zeros_like(values[:, 0])
    for t in range(values.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value * next_m - values[:, t]
        next_adv = (delta + gamma * lam * next_m * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_value, next_m = values[:, t], m[:, t]
    return adv, (adv + values) * m


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """PPO's clipped value loss per token ``[B, T]``: ``½ max((V − R)², (clip(V, V_old ± ε) − R)²)``."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


class PolicyWithValue(nn.Module):
    """``policy`` (a decoder) with a value head on its final hidden states; ``forward(x, y)`` returns
    ``(log p(y | x) [B, T], values [B, T])`` from one trunk pass."""

    def __init__(self, policy: nn.Module):
        from lmforge.model.heads import ScalarHead

        super().__init__()
        self.policy = policy
        device = next(policy.parameters()).device
        self.value = ScalarHead(policy.config, "none").to(device)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from lmforge.model.heads import hidden_states

        hidden = hidden_states(self.policy, x)  # [B, T, D]
        logits = self.policy.lm_head(hidden).float()  # [B, T, V]
        logp = -F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return logp, self.value(hidden)


@dataclass
class PPOBatch:
    """One PPO rollout: the sampled rows, their scores ``[B]``, summed log-ratios to the reference
    ``kl`` ``[B]``, whitened GAE ``advantages``, ``returns`` and the values at sampling ``[B, T]``."""

    ro: Rollout
    scores: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    old_values: torch.Tensor


def ppo_batch(
    pv: PolicyWithValue,
    engine: Any,
    prompts: Sequence[Sequence[int]],
    score: Callable[[list[list[int]], list[Any]], torch.Tensor],
    *,
    samples_per_prompt: int,
    params: Any,
    pad_id: int,
    end_id: int,
    reference: Reference,
    kl_coef: float,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> PPOBatch:
    """Sample ``samples_per_prompt`` replies per prompt and turn them into a PPO batch.

    ``score(rows, completions)`` gets each whole conversation (prompt ids + reply ids + ``end_id`` when
    the reply stopped) and the engine's ``Completion``\\ s and returns one score per row ``[B]``.
    """
    G = samples_per_prompt
    ro = rollout(
        engine, prompts, lambda i, c: 0.0, group_size=G, params=params, pad_id=pad_id, reference=reference
    )
    rows = [
        list(prompts[i // G]) + c.ids + ([end_id] if c.finish_reason == "stop" else [])
        for i, c in enumerate(ro.completions)
    ]
    with torch.no_grad():
        scores = score(rows, ro.completions).float().to(ro.x.device)
        _, old_values = pv(ro.x, ro.y)
    rewards = kl_shaped_rewards(scores, ro.old_logp, ro.ref_logp, ro.m, kl_coef)
    adv, returns = gae(rewards, old_values, ro.m, gamma, lam)
    sel = adv[ro.m]
    if sel.numel() > 1:  # whitened over the batch's reply tokens
        adv = ((adv - sel.mean()) / (sel.std() + 1e-8)) * ro.m
    kl = ((ro.old_logp - ro.ref_logp) * ro.m).sum(dim=1)  # [B] log π/π_ref of each reply
    return PPOBatch(ro, scores, kl, adv, returns, old_values)


def ppo_loss_sum(pv: PolicyWithValue, b: PPOBatch, *, clip_eps: float, vf_coef: float) -> torch.Tensor:
    """Clipped surrogate (per-token advantages) + ``vf_coef`` × clipped value loss, summed over reply tokens."""
    logp, values = pv(b.ro.x, b.ro.y)
    pg = clipped_policy_loss(logp, b.ro.old_logp, b.advantages, clip_eps)
    vl = clipped_value_loss(values, b.old_values, b.returns, clip_eps)
    return ((pg + vf_coef * vl) * b.ro.m).sum()
