"""A reply's log-probability under a decoder, and the frozen reference policy (alignment stages).

- ``encode_response``: prompt + reply through ``render_chat``; the mask covers the *last* assistant
  turn only (the reply being judged), so earlier assistant turns of a multi-turn prompt carry nothing.
- ``token_logprobs`` / ``sequence_logprobs``: log p(reply | prompt) per token ``[B, T]`` and summed per
  row ``[B]`` under a decoder.
- ``Reference``: the frozen reference model of DPO, GRPO and PPO — the policy with its LoRA adapters
  disabled (no copy) or, for a fully fine-tuned policy, a frozen copy taken at construction.

Shape notation: B batch (rows), T tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def encode_response(
    tok: Any, prompt: Sequence[dict[str, str]], reply: str, block_size: int
) -> tuple[list[int], list[bool]]:
    """``(ids, mask)`` of ``prompt`` + the assistant ``reply``; ``mask`` marks the reply's tokens and its
    closing ``<|end|>`` (targets, as ``render_chat``). At most ``block_size + 1`` tokens: the prompt
    loses tokens from the left first, then the reply is cut at the right.
    """
    from lmforge.tokenizer.chat import render_chat

    ids, mask = render_chat(tok, [*prompt, {"role": "assistant", "content": reply}])
    start = len(render_chat(tok, prompt, add_generation_prompt=True)[0])
    mask = [m and i >= start for i, m in enumerate(mask)]
    limit = block_size + 1
    if len(ids) > limit:
        cut = min(len(ids) - limit, max(start - 1, 0))  # drop prompt tokens (left), keep one to condition on
        ids, mask = ids[cut:][:limit], mask[cut:][:limit]
    return ids, mask


def token_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p(y[b, t] | x[b, :t+1])`` ``[B, T]`` in fp32 under a decoder (``lm_batch`` layout)."""
    logits = model(x).float()  # [B, T, V]
    return -F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # [B, T]


def sequence_logprobs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed log-probability of the masked targets [B], their count [B])`` of each row."""
    lp = token_logprobs(model, x, y)
    return (lp * m).sum(dim=1), m.sum(dim=1)


class Reference:
    """The frozen reference policy of ``policy``: its LoRA adapters disabled, or a frozen copy.

    With LoRA (``model.lora.apply_lora`` before this) nothing is copied: ``disable_lora`` computes the
    base weights exactly. Otherwise the policy is deep-copied *now*, in eval mode, every parameter
    ``requires_grad=False``. Calls are ``torch.no_grad``.
    """

    def __init__(self, policy: nn.Module):
        from lmforge.model.lora import lora_modules

        self.policy = policy
        self.uses_lora = bool(lora_modules(policy))
        self.model = None if self.uses_lora else copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def token_logprobs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``token_logprobs`` under the reference ``[B, T]``."""
        if self.model is not None:
            return token_logprobs(self.model, x, y)
        from lmforge.model.lora import disable_lora

        was = self.policy.training
        self.policy.eval()
        try:
            with disable_lora(self.policy):
                return token_logprobs(self.policy, x, y)
        finally:
            self.policy.train(was)
