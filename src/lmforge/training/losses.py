"""The alignment losses as small pure functions of tensors (DPO, reward models, GRPO / PPO).

- ``dpo_loss``: DPO (Rafailov et al. 2023, eq. 7) with the sigmoid loss, or IPO (Azar et al. 2023).
- ``bradley_terry_loss`` / ``plackett_luce_loss``: reward-model likelihoods (Bradley & Terry 1952;
  Plackett 1975, Luce 1959; Ouyang et al. 2022 train on all implied pairs of a ranking).
- ``group_advantages`` / ``clipped_policy_loss`` / ``kl_k3``: GRPO (Shao et al. 2024, DeepSeekMath §4);
  the clipped surrogate is PPO's too (``training.ppo``).

Shape notation: B batch (rows), T tokens, P prompts, G samples per prompt, K ranked responses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses ``[B]`` and the implicit rewards of the chosen and rejected replies ``[B]``.

    With ``h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))`` (summed log-probs of
    each reply): ``sigmoid`` is DPO's ``−log σ(β h)`` (Rafailov et al. 2023, eq. 7), ``ln 2`` when the
    policy equals the reference; ``ipo`` is IPO's ``(h − 1/(2β))²`` (Azar et al. 2023, eq. 17, on
    summed rather than length-averaged log-probs). The implicit reward is ``β (log π − log π_ref)``.

    Raises:
        ValueError: an unknown ``loss_type`` or ``beta <= 0``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    h = chosen - rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: sigmoid, ipo")
    return losses, beta * chosen.detach(), beta * rejected.detach()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``−log σ(r_w − r_l)`` per pair ``[B]``: the negative Bradley–Terry log-likelihood of the preference."""
    return -F.logsigmoid(chosen - rejected)


def plackett_luce_loss(scores: torch.Tensor) -> torch.Tensor:
    """Negative Plackett–Luce log-likelihood ``[B]`` of rankings; ``scores`` ``[B, K]`` are ordered best first.

    ``−Σ_k (s_k − log Σ_{j≥k} exp s_j)``; for ``K = 2`` this is ``bradley_terry_loss``.
    """
    tail_lse = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)  # [B, K]: log Σ_{j≥k} exp s_j
    return -(scores - tail_lse)[:, :-1].sum(dim=-1)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, *, scale: bool = True) -> torch.Tensor:
    """GRPO's group-normalised advantages ``[P, G]``: ``(r − mean_g r) / (std_g r + eps)``.

    ``std`` is the population standard deviation over each group; a group whose rewards are all equal
    gets zero advantages (it carries no signal). ``scale=False`` is Dr. GRPO (Liu et al. 2025, TRL's
    ``scale_rewards=False``): ``r − mean_g r`` only, so a group that is nearly all right or all wrong
    (small std) is not up-weighted over a group split half and half.
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """PPO's clipped surrogate, negated, per token ``[B, T]`` (Schulman et al. 2017, eq. 7).

    ``−min(ρ A, clip(ρ, 1−ε, 1+ε) A)`` with ``ρ = exp(logp − old_logp)``; ``advantages`` ``[B]`` (one
    per sequence, GRPO) or ``[B, T]`` (per token, PPO with GAE).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    return -torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate ``exp(r) − r − 1`` with ``r = ref_logp − logp`` (Schulman's "k3";
    GRPO eq. 4): unbiased on samples from π, never negative."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1
