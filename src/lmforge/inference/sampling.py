"""Pick the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

This is the one place sampling is written; generation, serving and evaluation all call ``sample_next``.
Order of operations (as in Hugging Face ``generate``): divide by the temperature, keep the ``top_k``
largest logits, then keep the smallest set of the remaining tokens whose probability mass reaches
``top_p`` (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration"), renormalise, draw.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` naming the argument if a sampling setting is impossible.

    Valid: ``temperature >= 0`` and finite (0 = greedy); ``top_k`` None or an int >= 1 (values above the
    vocabulary size keep every token); ``top_p`` None or in ``(0, 1]``.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected None or an integer >= 1, got {top_k!r}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row of ``logits``.

    Args:
        logits: ``[B, V]`` floating-point next-token logits.
        temperature: divides the logits; 0 means greedy (argmax; ``top_k``/``top_p`` are then irrelevant).
        top_k: keep only the ``top_k`` largest logits of each row (exactly ``top_k``, ties broken by index).
        top_p: keep the smallest set of most likely tokens whose total probability is ``>= top_p``; the most
            likely token is always kept, so a tiny ``top_p`` is greedy.
        generator: random source for reproducible draws (must be on ``logits.device``); ``None`` = global RNG.

    Returns:
        ``LongTensor[B]`` of token ids.

    Raises:
        ValueError: if ``logits`` is not a 2-D floating tensor with ``V >= 1`` or a setting is invalid
            (see ``check_sampling_args``).
    """
    if logits.ndim != 2 or not logits.is_floating_point() or logits.shape[1] < 1:
        raise ValueError(
            f"logits: expected a floating tensor of shape [B, V] with V >= 1, got {tuple(logits.shape)} {logits.dtype}"
        )
    check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)

    scaled = logits.float() / temperature  # [B, V]
    if top_k is not None and top_k < scaled.shape[1]:
        values, indices = torch.topk(scaled, top_k, dim=-1)  # [B, k]
        scaled = torch.full_like(scaled, -math.inf).scatter(-1, indices, values)
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [B, V]
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, -math.inf)
        scaled = torch.full_like(scaled, -math.inf).scatter(-1, order, sorted_logits)
    probs = F.softmax(scaled, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
