"""Score a language model on a token stream: mean loss, perplexity, bits per byte; and the unigram baseline.

Windowing. The stream is cut, from its start, into windows of ``block_size + 1`` tokens that overlap by one
token (window ``i`` covers ``tokens[i*T : i*T + T + 1]``, ``T = block_size``): the model reads the first
``T`` tokens and is scored on the next-token prediction at every position. Consecutive windows share their
boundary token, so every token after the first is a target exactly once, and the last, shorter window is
included. Each prediction sees at most ``T`` tokens of context and at least one (at a window start), so the
numbers depend on ``block_size`` the same way the training loss does. The result is deterministic.

Sliding windows (``stride < block_size``; "strided" perplexity as in Hugging Face's *Perplexity of
fixed-length models*). The first window scores its first ``T`` targets as above; each later window
ends ``stride`` targets further on and scores only those ``stride`` (the last one: whatever is left),
reading the ``T - stride`` tokens before them as context. Every target is still scored exactly once,
but each after the first ``T`` sees at least ``T - stride`` tokens of context instead of as few as one:
the loss measures the model's predictions with the context it was trained for, at ``T / stride`` times
the forward passes. ``stride = block_size`` (the default) is the disjoint windowing above.

Bits per byte. ``bpb = sum(nats over targets with bytes > 0) / (ln 2 * sum(token_bytes[targets]))``.
Targets whose token has zero bytes (special tokens such as ``<|bos|>``) are excluded from *both* sums of
bpb, as in nanochat's ``evaluate_bpb``: they stand for no text, so predicting them is not compressing
text. They *are* counted in ``loss`` and ``perplexity``, which average over every scored target.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def evaluate_lm(
    model: nn.Module,
    tokens: np.ndarray,
    *,
    block_size: int,
    batch_size: int,
    token_bytes: np.ndarray,
    max_tokens: int | None = None,
    device: str | torch.device = "cpu",
    stride: int | None = None,
) -> dict[str, float | int]:
    """Evaluate ``model`` on the token stream ``tokens`` (windowing and bpb rules in the module docstring).

    Args:
        model: any module with ``forward(idx: LongTensor[B, T]) -> logits[B, T, V]``, already on ``device``.
            It is put in eval mode for the call and its previous mode is restored afterwards.
        tokens: 1-D integer token stream (a memory-mapped ``uint16``/``uint32`` shard is fine; only the
            windows being scored are copied).
        block_size: context length ``T`` of each window (number of predictions per full window).
        batch_size: number of full windows per forward pass (the last, shorter window runs alone).
        token_bytes: 1-D array, ``token_bytes[id]`` = UTF-8 bytes of token ``id`` (0 for special tokens).
        max_tokens: score at most this many targets (the first ones of the stream); ``None`` = all.
        device: device the windows are moved to.
        stride: targets each window after the first adds (sliding windows, module docstring); ``None``
            or ``block_size`` = disjoint windows.

    Returns:
        ``{"loss": mean nats per scored target, "perplexity": exp(loss), "bpb": bits per byte (nan when
        no scored target has bytes), "tokens": number of scored targets, "bytes": bytes of scored targets}``.

    Raises:
        ValueError: on a stream that is not 1-D or has fewer than 2 tokens, non-positive sizes, ids outside
            ``token_bytes`` or the model's vocabulary, or logits of the wrong shape.
    """
    tokens = _check_stream(tokens, "tokens")
    if len(tokens) < 2:
        raise ValueError(f"tokens: need at least 2 tokens to score one prediction, got {len(tokens)}")
    _check_positive(block_size=block_size, batch_size=batch_size)
    if max_tokens is not None:
        _check_positive(max_tokens=max_tokens)
    stride = block_size if stride is None else stride
    _check_positive(stride=stride)
    if stride > block_size:
        raise ValueError(f"stride: expected at most block_size={block_size}, got {stride}")
    token_bytes = np.asarray(token_bytes)
    if token_bytes.ndim != 1 or not np.issubdtype(token_bytes.dtype, np.integer):
        raise ValueError(
            f"token_bytes: expected a 1-D integer array, got shape {token_bytes.shape} {token_bytes.dtype}"
        )
    if token_bytes.size and token_bytes.min() < 0:
        raise ValueError(f"token_bytes: byte counts must be >= 0, found {token_bytes.min()}")

    n_targets = len(tokens) - 1 if max_tokens is None else min(len(tokens) - 1, max_tokens)
    used = tokens[: n_targets + 1]
    if used.min() < 0 or used.max() >= len(token_bytes):
        raise ValueError(
            f"tokens: ids must lie in [0, {len(token_bytes)}) (len(token_bytes)), "
            f"found range [{used.min()}, {used.max()}]"
        )
    bytes_of = torch.as_tensor(token_bytes.astype(np.int64), device=device)

    total_nats = 0.0  # over every target
    text_nats = 0.0  # over targets with bytes > 0
    total_bytes = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            windows = (
                ((starts, length, 0) for starts, length in _batches(n_targets, block_size, batch_size))
                if stride == block_size
                else _sliding_batches(n_targets, block_size, stride, batch_size)
            )
            for starts, length, skip in windows:
                nats, targets = _score(model, used, starts, length, device)  # [B*L], [B*L]
                if skip:  # context-only positions of sliding windows are not scored
                    nats = nats.view(len(starts), length)[:, skip:].reshape(-1)
                    targets = targets.view(len(starts), length)[:, skip:].reshape(-1)
                nbytes = bytes_of[targets]
                total_nats += nats.sum().item()
                text_nats += nats[nbytes > 0].sum().item()
                total_bytes += int(nbytes.sum().item())
    finally:
        model.train(was_training)

    loss = total_nats / n_targets
    result: dict[str, float | int] = {
        "loss": loss,
        "perplexity": _exp(loss),
        "bpb": text_nats / (math.log(2) * total_bytes) if total_bytes else math.nan,
        "tokens": n_targets,
        "bytes": total_bytes,
    }
    logger.info(
        "eval: %d tokens, %d bytes, loss %.4f, ppl %.2f, bpb %.4f",
        n_targets,
        total_bytes,
        loss,
        result["perplexity"],
        result["bpb"],
    )
    return result


def unigram_entropy(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy, in nats per token, of ``val_tokens`` under the unigram model of ``train_tokens``.

    The unigram model is add-one (Laplace) smoothed: ``p(v) = (count_train(v) + 1) / (N_train + vocab_size)``,
    so unseen tokens get a finite cost. A trained LM's validation loss must be below this number.

    Raises:
        ValueError: if a stream is not 1-D integer, ``val_tokens`` is empty, or an id is outside
            ``[0, vocab_size)``.
    """
    _check_positive(vocab_size=vocab_size)
    train = _check_stream(train_tokens, "train_tokens")
    val = _check_stream(val_tokens, "val_tokens")
    if len(val) == 0:
        raise ValueError("val_tokens: empty stream, cross-entropy is undefined")
    train_counts = _counts(train, vocab_size, "train_tokens")
    log_p = np.log(train_counts + 1.0) - math.log(len(train) + vocab_size)  # [V]
    val_counts = _counts(val, vocab_size, "val_tokens")
    return float(-(val_counts @ log_p) / len(val))


def _counts(stream: np.ndarray, vocab_size: int, name: str, chunk: int = 1 << 24) -> np.ndarray:
    """``np.bincount`` of ``stream`` over ``[0, vocab_size)``, a chunk at a time so a memory-mapped
    shard is never copied whole into int64; raises ``ValueError`` on an id outside the range."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(stream), chunk):
        part = np.asarray(stream[start : start + chunk]).astype(np.int64)
        if part.min() < 0 or part.max() >= vocab_size:
            raise ValueError(
                f"{name}: ids must lie in [0, {vocab_size}), found range [{part.min()}, {part.max()}]"
            )
        counts += np.bincount(part, minlength=vocab_size)
    return counts


def _batches(n_targets: int, block_size: int, batch_size: int):
    """Yield ``(window starts, window length)``: full windows in groups of ``batch_size``, then the remainder."""
    n_full = n_targets // block_size
    for first in range(0, n_full, batch_size):
        last = min(first + batch_size, n_full)
        yield [i * block_size for i in range(first, last)], block_size
    remainder = n_targets - n_full * block_size
    if remainder:
        yield [n_full * block_size], remainder


def _sliding_batches(n_targets: int, block_size: int, stride: int, batch_size: int):
    """Yield ``(window starts, window length, unscored leading positions)`` of sliding windows: the
    first window scores targets ``[0, T)``, each later one the next ``stride`` (the last, what is left)
    after ``T - stride`` positions of context; windows of one shape are grouped ``batch_size`` at a time."""
    first = min(block_size, n_targets)
    yield [0], first, 0
    group: list[int] = []
    end = first
    while end < n_targets:
        new_end = min(end + stride, n_targets)
        start, skip = new_end - block_size, block_size - (new_end - end)
        if skip != block_size - stride:  # the last, shorter chunk: its own batch
            if group:
                yield group, block_size, block_size - stride
                group = []
            yield [start], block_size, skip
        else:
            group.append(start)
            if len(group) == batch_size:
                yield group, block_size, block_size - stride
                group = []
        end = new_end
    if group:
        yield group, block_size, block_size - stride


def _score(
    model: nn.Module, tokens: np.ndarray, starts: list[int], length: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target cross-entropy (float64 nats) and target ids of the windows at ``starts``, both ``[B*L]``."""
    windows = np.stack([tokens[s : s + length + 1] for s in starts]).astype(np.int64)  # [B, L+1]
    windows_t = torch.from_numpy(windows).to(device)
    inputs, targets = windows_t[:, :-1], windows_t[:, 1:]  # [B, L] each
    logits = model(inputs)
    if logits.ndim != 3 or logits.shape[:2] != inputs.shape:
        raise ValueError(
            f"model returned logits of shape {tuple(logits.shape)}, expected "
            f"({inputs.shape[0]}, {inputs.shape[1]}, vocab_size)"
        )
    vocab = logits.shape[-1]
    if int(targets.max()) >= vocab:
        raise ValueError(f"tokens: id {int(targets.max())} is outside the model's vocabulary of {vocab}")
    nats = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), reduction="none")
    return nats.double(), targets.reshape(-1)


def _check_stream(tokens: np.ndarray, name: str) -> np.ndarray:
    """Return ``tokens`` as a 1-D integer numpy array (no copy when it already is one)."""
    arr = np.asarray(tokens)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer token stream, got shape {arr.shape} {arr.dtype}")
    return arr


def _check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _exp(x: float) -> float:
    """``exp(x)``, or ``inf`` when it overflows (a diverged model must not crash its evaluation)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
