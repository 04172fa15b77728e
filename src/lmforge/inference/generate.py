"""Autoregressive generation from any next-token model, one token at a time.

The model is any ``nn.Module`` with ``forward(idx: LongTensor[B, T]) -> logits[B, T, V]``. When it also
offers ``new_kv_cache(batch_size, max_len)`` and ``forward(idx, cache)`` (lmforge's ``Decoder`` does), the
prompt is prefilled once and each new token costs one cached decode step; once the sequence outgrows
``block_size`` the loop falls back to a full forward over the last ``block_size`` tokens (the
reference behaviour), so cached and uncached generation give the same tokens. For batches of prompts,
stop strings and the full set of sampling controls on an lmforge ``Decoder``, use ``engine.Engine``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain

import torch
from torch import nn

from lmforge.inference.sampling import check_sampling_args, sample_next


def stream(
    model: nn.Module,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: AbstractSet[int] = frozenset(),
    device: str | torch.device | None = None,
) -> Iterator[int]:
    """Yield new token ids one by one after ``prompt_ids``.

    Arguments are checked when ``stream`` is called, not at the first ``next()``. Between yields no global
    state is changed: each forward pass runs under ``torch.no_grad()`` with the model in eval mode, and the
    model's previous mode is restored before the token is yielded.

    Args:
        model: next-token model, already on ``device``.
        prompt_ids: at least one token id (e.g. ``<|bos|>``); the context is its last ``block_size`` ids.
        max_new_tokens: stop after this many new tokens (0 yields nothing).
        block_size: longest context the model is given; older tokens are cropped.
        temperature, top_k, top_p: sampling settings, see ``sampling.sample_next`` (temperature 0 = greedy).
        seed: seeds a private ``torch.Generator`` so the output is reproducible; ``None`` = global RNG.
        stop_ids: generation ends when one of these is sampled; the stop id is not yielded.
        device: where the ids are placed; default is the device of the model's first parameter (or cpu).

    Raises:
        ValueError: on an empty prompt, ``max_new_tokens < 0``, ``block_size < 1`` or bad sampling settings.
    """
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("prompt_ids: need at least one token (e.g. <|bos|>) to condition on")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, got {block_size!r}")
    check_sampling_args(temperature, top_k, top_p)
    device = torch.device(device) if device is not None else _model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    return _stream(
        model,
        ids,
        max_new_tokens=max_new_tokens,
        block_size=block_size,
        sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator},
        stop_ids=frozenset(stop_ids),
        device=device,
    )


def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: AbstractSet[int] = frozenset(),
    device: str | torch.device | None = None,
) -> list[int]:
    """Return the new token ids (prompt excluded, stop id excluded); arguments as in ``stream``."""
    return list(
        stream(
            model,
            prompt_ids,
            max_new_tokens=max_new_tokens,
            block_size=block_size,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_ids=stop_ids,
            device=device,
        )
    )


def _stream(
    model: nn.Module,
    ids: list[int],
    *,
    max_new_tokens: int,
    block_size: int,
    sampling: dict,
    stop_ids: frozenset[int],
    device: torch.device,
) -> Iterator[int]:
    """The generation loop behind ``stream`` (arguments already checked)."""
    cache = model.new_kv_cache(1, block_size) if hasattr(model, "new_kv_cache") else None
    for _ in range(max_new_tokens):
        if cache is not None and len(ids) <= block_size:
            fresh = torch.tensor([ids[cache.pos :]], dtype=torch.long, device=device)  # [1, T new]
            logits = _last_logits(model, fresh, cache)  # [1, V]
        else:
            cache = None  # past block_size: crop and recompute, as without a cache
            context = torch.tensor([ids[-block_size:]], dtype=torch.long, device=device)  # [1, T]
            logits = _last_logits(model, context)  # [1, V]
        token = int(sample_next(logits, **sampling)[0])
        if token in stop_ids:
            return
        ids.append(token)
        yield token


def _last_logits(model: nn.Module, context: torch.Tensor, cache: object | None = None) -> torch.Tensor:
    """Logits ``[B, V]`` at the last position, computed in eval mode without autograd; mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(context) if cache is None else model(context, cache)
    finally:
        model.train(was_training)
    if logits.ndim != 3 or logits.shape[:2] != context.shape:
        raise ValueError(
            f"model returned logits of shape {tuple(logits.shape)}, expected "
            f"({context.shape[0]}, {context.shape[1]}, vocab_size)"
        )
    return logits[:, -1, :]


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; cpu for a model that has neither."""
    for tensor in chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")
