"""BERT's pre-training objectives: masked-token corruption, next-sentence pairs, and their losses.

From Devlin et al. 2019 (BERT):

- ``mask_tokens``: select 15% of the tokens; of those, replace 80% with [MASK], 10% with a random token,
  and leave 10% unchanged; predict the original token at every selected position (targets are
  ``IGNORE_INDEX`` elsewhere). Special tokens ([CLS], [SEP], [PAD], [MASK], ...) are never selected and
  never drawn as random replacements. *Departure*: each token is selected independently with
  probability ``prob`` (as Hugging Face's collator does) rather than exactly round(15% of the length)
  per sequence, and masks are drawn afresh at every call (dynamic masking, Liu et al. 2019, RoBERTa).
- ``make_nsp_pairs``: ``[CLS] A [SEP] B [SEP]`` where B is the segment that follows A in its document
  half of the time (label 0, IsNext) and a random segment of another document otherwise (label 1,
  NotNext). Token types are 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``. Pairs longer than
  ``max_len`` are truncated as BERT's ``truncate_seq_pair`` does (trim the longer segment one token at a
  time) except that tokens come off the end only, never the front.
- ``mlm_loss`` / ``nsp_loss``: thin wrappers over the shared ``token_loss`` (step.py) returning
  ``(loss_sum, n)``, so the token-weighted accumulation rule applies to both. BERT's objective is
  ``mlm_sum / n_mlm + nsp_sum / n_nsp``, each normalised over the whole accumulated batch.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

import torch

from lmforge.training.step import IGNORE_INDEX, token_loss


def mask_tokens(
    ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``ids`` ``[B, T]`` for masked-LM training (BERT's 80/10/10 rule).

    Args:
        ids: ``[B, T]`` integer token ids in ``[0, vocab_size)``; not modified.
        mask_id: id of the [MASK] token (treated as special whether or not listed).
        vocab_size: size of the vocabulary; random replacements come from its non-special ids.
        special_ids: ids never selected nor drawn as replacements; must include the padding id.
        prob: probability that a non-special token is selected for prediction, in (0, 1].
        generator: random source, on the device of ``ids``; None uses torch's global one.

    Returns:
        ``(inputs, targets)``, both ``[B, T]`` long: the corrupted ids, and the original id at each
        selected position with ``IGNORE_INDEX`` (-100) everywhere else.

    Raises:
        ValueError: a non-integer or non-2-D ``ids``, ids or ``mask_id`` outside the vocabulary, ``prob``
            outside (0, 1], or no non-special id left to draw replacements from.
    """
    if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32):
        raise ValueError(f"ids must be a [B, T] integer tensor, got {tuple(ids.shape)} {ids.dtype}")
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"prob must be in (0, 1], got {prob}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got min {int(ids.min())} max {int(ids.max())}")
    special = torch.tensor(sorted({*special_ids, mask_id}), dtype=torch.long, device=ids.device)
    ids = ids.long()
    is_regular = torch.ones(vocab_size, dtype=torch.bool, device=ids.device)
    is_regular[special[(special >= 0) & (special < vocab_size)]] = False
    regular = is_regular.nonzero().squeeze(1)  # [R] ids that may replace a selected token
    if regular.numel() == 0:
        raise ValueError(f"every id of the vocabulary ({vocab_size}) is special; nothing to predict")

    def uniform() -> torch.Tensor:
        return torch.rand(ids.shape, generator=generator, device=ids.device)  # [B, T]

    selected = (uniform() < prob) & is_regular[ids]  # [B, T]
    action = uniform()  # [B, T]: < 0.8 mask, 0.8 .. 0.9 random token, >= 0.9 keep
    random_ids = regular[
        torch.randint(len(regular), ids.shape, generator=generator, device=ids.device)
    ]  # [B, T]
    inputs = torch.where(selected & (action < 0.8), mask_id, ids)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    targets = ids.masked_fill(~selected, IGNORE_INDEX)
    return inputs, targets


def _truncate_pair(a: list[int], b: list[int], max_tokens: int) -> None:
    """Trim the longer of ``a``/``b`` from its end, one token at a time, until both fit ``max_tokens``."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        longer.pop()


def make_nsp_pairs(
    docs: Sequence[Sequence[Sequence[int]]],
    *,
    max_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    rng: random.Random,
) -> dict[str, torch.Tensor]:
    """One next-sentence example per pair of consecutive segments in each document.

    For every document and every segment A that has a successor, B is that successor with probability
    1/2 and otherwise a uniformly chosen segment of a uniformly chosen *other* document. Examples are
    ``[CLS] A [SEP] B [SEP]``, truncated to ``max_len`` and right-padded with ``pad_id`` to the longest
    example; their order follows ``docs`` (shuffle the batch, not the pairs, if needed).

    Args:
        docs: documents, each a list of segments (sentences), each a list of token ids.
        max_len: maximum length of an example, specials included (>= 5).
        cls_id, sep_id, pad_id: ids of [CLS], [SEP] and [PAD].
        rng: the random source of the coin flips and the random segments.

    Returns:
        ``input_ids`` ``[N, L]`` long, ``token_type_ids`` ``[N, L]`` long (0 for [CLS] A [SEP] and
        padding, 1 for B [SEP]), ``attention_mask`` ``[N, L]`` bool (True at real tokens) and
        ``nsp_labels`` ``[N]`` long (0 = B follows A, 1 = B is random), with L <= max_len.

    Raises:
        ValueError: ``max_len`` < 5, fewer than two non-empty documents, an empty segment, or no
            document with two segments.
    """
    if max_len < 5:
        raise ValueError(f"max_len must be >= 5 ([CLS] A [SEP] B [SEP] with one token each), got {max_len}")
    docs = [doc for doc in docs if len(doc) > 0]
    if len(docs) < 2:
        raise ValueError(f"need at least two non-empty documents to draw random segments, got {len(docs)}")
    for d, doc in enumerate(docs):
        for s, segment in enumerate(doc):
            if len(segment) == 0:
                raise ValueError(f"segment {s} of non-empty document {d} is empty")
    rows: list[tuple[list[int], list[int], int]] = []
    for d, doc in enumerate(docs):
        for i in range(len(doc) - 1):
            a = list(doc[i])
            if rng.random() < 0.5:
                b, label = list(doc[i + 1]), 0
            else:
                other = rng.randrange(len(docs) - 1)
                other += other >= d  # uniform over every document but d
                b, label = list(rng.choice(docs[other])), 1
            _truncate_pair(a, b, max_len - 3)
            rows.append(([cls_id, *a, sep_id, *b, sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1), label))
    if not rows:
        raise ValueError("no document has two consecutive segments; NSP needs at least one")
    L = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), L), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.bool)
    for r, (ids, types, _) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        token_type_ids[r, : len(ids)] = torch.tensor(types)
        attention_mask[r, : len(ids)] = True
    nsp_labels = torch.tensor([label for _, _, label in rows], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "nsp_labels": nsp_labels,
    }


def mlm_loss(mlm_logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over selected positions of ``mlm_logits`` ``[B, T, V]`` vs ``targets`` ``[B, T]``.

    ``targets`` is ``mask_tokens``' output (``IGNORE_INDEX`` where nothing is predicted). Returns
    ``(loss_sum, n_selected)`` from ``token_loss``.
    """
    return token_loss(mlm_logits, targets)


def nsp_loss(nsp_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of ``nsp_logits`` ``[B, 2]`` vs ``labels`` ``[B]``; returns ``(loss_sum, B)``.

    Each example counts as one "token" of ``token_loss``, so NSP accumulates by example count.
    """
    if nsp_logits.dim() != 2 or labels.shape != nsp_logits.shape[:1]:
        raise ValueError(
            f"expected nsp_logits [B, 2] and labels [B], got {tuple(nsp_logits.shape)} and {tuple(labels.shape)}"
        )
    return token_loss(nsp_logits[:, None], labels[:, None])  # as [B, 1, 2] and [B, 1]
