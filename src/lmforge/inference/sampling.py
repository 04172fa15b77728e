"""Pick the next token from logits: greedy, temperature, top-k, nucleus (top-p) and min-p sampling,
with an optional repetition penalty.

This is the one place sampling is written: the engine (``lmforge generate``, chat, evaluation, alignment
rollouts), the serving scheduler and speculative decoding all call ``sample`` (speculative decoding also
``distribution`` and ``draw`` for its acceptance test), so a seeded call gives the same tokens through
each. Every random draw is ``draw``: ``torch.multinomial`` per row from that row's own generator.
Order of operations (as
in Hugging Face ``generate``): the repetition penalty (Keskar et al. 2019, CTRL: a seen token's positive
logit is divided by the penalty, a negative one multiplied), divide by the temperature, keep the
``top_k`` largest logits, keep the smallest set of the remaining tokens whose probability mass reaches
``top_p`` (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration"), then drop tokens whose
probability is below ``min_p`` times the most likely token's (Nguyen et al. 2024, "min-p sampling"),
renormalise, draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def check_sampling_args(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> None:
    """Raise ``ValueError`` naming the argument if a sampling setting is impossible.

    Valid: ``temperature >= 0`` and finite (0 = greedy); ``top_k`` None or an int >= 1 (values above the
    vocabulary size keep every token); ``top_p`` None or in ``(0, 1]``; ``min_p`` None or in ``[0, 1]``;
    ``repetition_penalty`` a finite number > 0 (1 = off).
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
    if min_p is not None:
        if isinstance(min_p, bool) or not isinstance(min_p, int | float) or not 0 <= min_p <= 1:
            raise ValueError(f"min_p: expected None or a number in [0, 1], got {min_p!r}")
    bad_penalty = isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, int | float)
    if bad_penalty or not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise ValueError(
            f"repetition_penalty: expected a finite number > 0 (1 = off), got {repetition_penalty!r}"
        )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: where ``seen`` (bool ``[B, V]``) is set, positive logits are divided by
    ``penalty`` and negative ones multiplied by it. Returns a new ``[B, V]`` tensor."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def distribution(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """The probabilities ``[B, V]`` sampling draws from: the softmax of the fp32 logits divided by the
    temperature, with the tokens top-k / top-p / min-p drop at 0.

    ``temperature`` must be > 0 here (greedy is the caller's argmax).
    """
    scaled = logits.float() / temperature  # [B, V]
    if top_k is not None and top_k < scaled.shape[1]:
        values, indices = torch.topk(scaled, top_k, dim=-1)  # [B, k]
        scaled = torch.full_like(scaled, -math.inf).scatter(-1, indices, values)
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [B, V]
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop = mass_before >= top_p  # a top_p below fp32's range compares as 0: every token would go
        drop[:, 0] = False  # the most likely token always stays
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        scaled = torch.full_like(scaled, -math.inf).scatter(-1, order, sorted_logits)
    if min_p:
        # p(v) < min_p * p(max)  <=>  logit(v) < logit(max) + log(min_p)
        floor = scaled.max(dim=-1, keepdim=True).values + math.log(min_p)  # [B, 1]
        scaled = scaled.masked_fill(scaled < floor, -math.inf)
    return F.softmax(scaled, -1)


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token id per row of ``probs`` ``[B, V]`` (non-negative, not necessarily normalised), drawn by
    ``torch.multinomial`` from that row's generator (``generators[b]``), so a row's draw does not depend
    on its batch-mates; ``None`` = the global RNG. The one random draw of every decoding path (the same
    draws ``lmforge generate`` made before the paths were joined, so its seeded outputs are unchanged);
    tokens of zero probability are never picked."""
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(generators)])


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    seen: torch.Tensor | None = None,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """Draw one token id per row of ``logits``: the one sampler of the engine, the serving scheduler and
    speculative decoding (which adds its acceptance test), so equal logits and seeds give equal tokens.

    Args:
        logits: ``[B, V]`` floating-point next-token logits.
        temperature: divides the logits; 0 means greedy (argmax; ``top_k``/``top_p`` are then irrelevant).
        top_k: keep only the ``top_k`` largest logits of each row (exactly ``top_k``, ties broken by index).
        top_p: keep the smallest set of most likely tokens whose total probability is ``>= top_p``; the most
            likely token is always kept, so a tiny ``top_p`` is greedy.
        min_p: drop tokens whose probability is below ``min_p`` times the top token's (None or 0 = off).
        generators: row ``b``'s random source (on ``logits.device``), so a row's draw does not depend on
            its batch-mates; ``None`` = the global RNG.
        seen: bool ``[B, V]``, tokens the repetition penalty applies to (with ``repetition_penalty``).
        repetition_penalty: CTRL's penalty (1 = off), applied first.

    Returns:
        ``LongTensor[B]`` of token ids.

    Raises:
        ValueError: if ``logits`` is not a 2-D floating tensor with ``V >= 1``, a setting is invalid
            (see ``check_sampling_args``), or ``generators`` does not have one entry per row.
    """
    if logits.ndim != 2 or not logits.is_floating_point() or logits.shape[1] < 1:
        raise ValueError(
            f"logits: expected a floating tensor of shape [B, V] with V >= 1, got {tuple(logits.shape)} {logits.dtype}"
        )
    check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    if generators is not None and len(generators) != logits.shape[0]:
        raise ValueError(f"generators: expected one per row ({logits.shape[0]}), got {len(generators)}")
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1)
    return draw(
        distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p), generators
    )
