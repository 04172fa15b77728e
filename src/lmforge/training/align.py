"""The names ``stages/align/grpo.py`` still reads from here; alignment's pieces live in their own modules.

``training.logprobs`` (replies' log-probabilities, the frozen reference), ``training.losses`` (DPO,
reward-model and GRPO losses), ``training.rollouts`` (GRPO sampling, DAPO filtering, the GRPO loss),
``training.rewards`` (verifiable rewards, the arithmetic task), ``training.reward_model`` and
``training.preferences`` (preference rows and sets). Remove this module once ``align.grpo`` imports
those modules (it was being edited when ``training/align.py`` was split).
"""

from __future__ import annotations

from lmforge.training.logprobs import Reference
from lmforge.training.losses import kl_k3
from lmforge.training.rewards import (
    arithmetic_problems,
    correctness_reward,
    extract_answer,
    format_reward,
    split_heldout,
)
from lmforge.training.rollouts import grpo_loss_sum, informative_groups, keep_groups, rollout

__all__ = [
    "Reference",
    "arithmetic_problems",
    "correctness_reward",
    "extract_answer",
    "format_reward",
    "grpo_loss_sum",
    "informative_groups",
    "keep_groups",
    "kl_k3",
    "rollout",
    "split_heldout",
]
