"""Turn fine-tuning examples into model batches: chat rows (packed or padded), labelled texts, LM windows.

- ``encode_conversations`` renders each conversation with ``tokenizer.chat.render_chat`` (the one place
  that decides what is supervised) and keeps examples that still supervise a token after truncation
  to ``block_size + 1`` tokens.
- ``chat_rows`` lays examples out in rows of ``block_size + 1`` tokens: ``pad`` gives one example per
  row; ``pack`` fills each row greedily with whole examples in order (first fit), so fewer pad tokens
  are computed. *Departure* from packing with per-document attention masks: packed examples can attend
  to the examples before them in the row; each starts with ``<|bos|>``, which the model has learned to
  treat as a document boundary, and no loss is ever taken on a token of another example.
- ``lm_batch`` turns rows into ``(x, y, mask)`` for ``training.step.token_loss``: ``x = row[:-1]``,
  ``y = row[1:]``, ``mask = row_mask[1:]`` (``mask[i]`` supervises target ``y[i]``).
- plain texts for classification and embeddings are framed and padded by ``tokenizer/texts.py``
  (``encode_texts``, ``pad_batch``), which inference and serving use too.
- ``window_batch``: random windows of a token stream, for continued pretraining and replay.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from lmforge.tokenizer.chat import render_chat

PACKINGS = ("pad", "pack")
Example = tuple[list[int], list[bool]]  # (ids, supervised-target mask)


def encode_conversations(
    tok: Tokenizer, conversations: Sequence[Sequence[dict[str, str]]], block_size: int
) -> tuple[list[Example], int]:
    """``(examples, dropped)``: each conversation rendered and cut to ``block_size + 1`` tokens.

    A conversation whose rendering raises ``ValueError`` (bad role order) or that supervises no token
    within the first ``block_size + 1`` is dropped and counted.
    """
    examples: list[Example] = []
    dropped = 0
    for messages in conversations:
        try:
            ids, mask = render_chat(tok, messages)
        except ValueError:
            dropped += 1
            continue
        ids, mask = ids[: block_size + 1], mask[: block_size + 1]
        if len(ids) < 2 or not any(mask[1:]):
            dropped += 1
            continue
        examples.append((ids, mask))
    return examples, dropped


def chat_rows(examples: Sequence[Example], block_size: int, packing: str) -> list[Example]:
    """Rows of at most ``block_size + 1`` tokens: one example each (``pad``) or packed (``pack``).

    Raises:
        ValueError: an unknown ``packing``.
    """
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r}; valid: {', '.join(PACKINGS)}")
    if packing == "pad":
        return [(list(ids), list(mask)) for ids, mask in examples]
    rows: list[Example] = []
    space: list[int] = []  # free tokens left in each row
    for ids, mask in examples:
        for r, free in enumerate(space):
            if len(ids) <= free:
                rows[r][0].extend(ids)
                rows[r][1].extend(mask)
                space[r] -= len(ids)
                break
        else:
            rows.append((list(ids), list(mask)))
            space.append(block_size + 1 - len(ids))
    return rows


def lm_batch(rows: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [B, T], y [B, T], mask [B, T] bool)`` from rows, right-padded to the longest row + 1."""
    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1])
        y[i, :n] = torch.tensor(ids[1:])
        m[i, :n] = torch.tensor(mask[1:])
    return x, y, m


def window_batch(
    stream: np.ndarray, n: int, block_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random windows of ``block_size + 1`` tokens of ``stream`` as ``(x [n, T], y [n, T])``.

    Raises:
        ValueError: the stream is shorter than one window.
    """
    if len(stream) < block_size + 1:
        raise ValueError(
            f"token stream of {len(stream)} tokens is shorter than one window ({block_size + 1})"
        )
    starts = rng.integers(0, len(stream) - block_size, size=n)
    rows = np.stack([np.asarray(stream[s : s + block_size + 1], dtype=np.int64) for s in starts])
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]
