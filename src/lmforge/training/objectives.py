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


class PretrainObjective:
    """How a pretraining batch of windows ``(x, y)`` becomes ``(model inputs, targets, supervised count)``
    and a summed loss, for the three objectives the pretrain stage offers:

    - ``clm``: next-token prediction; every position of ``y`` is supervised.
    - ``mlm``: BERT masked-LM on the window ``x`` (``mask_tokens``; 15%, 80/10/10), RoBERTa-style.
    - ``mlm+nsp``: masked-LM on ``[CLS] A [SEP] B [SEP]`` pairs cut from the windows, where B is the
      true continuation of A (half the rows) or the second half of another row of the batch (NSP,
      Devlin et al. 2019). Departure: segments are window halves, not sentences. The step loss is
      MLM mean + NSP mean, expressed as a token-weighted sum (NSP scaled by masked tokens / rows) so
      the shared accumulation rule applies unchanged.
    """

    def __init__(
        self,
        kind: str,
        *,
        vocab_size: int,
        special_ids: Collection[int],
        mask_id: int = -1,
        cls_id: int = -1,
        sep_id: int = -1,
        seed: int = 0,
    ):
        if kind not in ("clm", "mlm", "mlm+nsp"):
            raise ValueError(f"unknown objective {kind!r}; valid: clm, mlm, mlm+nsp")
        needed = [] if kind == "clm" else [mask_id] + ([cls_id, sep_id] if kind == "mlm+nsp" else [])
        if any(i < 0 for i in needed):
            raise ValueError(f"objective {kind} needs [MASK] (and [CLS]/[SEP] for NSP) in the tokenizer")
        self.kind = kind
        self.vocab_size = vocab_size
        self.special_ids = set(special_ids) | {i for i in (mask_id, cls_id, sep_id) if i >= 0}
        self.mask_id, self.cls_id, self.sep_id = mask_id, cls_id, sep_id
        self.generator = torch.Generator().manual_seed(seed)

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, torch.Tensor, int]:
        """``(model kwargs, targets, supervised tokens)`` for windows ``x``, ``y`` ``[B, T]``."""
        if self.kind == "clm":
            return {"idx": x}, y, int(y.numel())
        batch: dict = {}
        ids = x
        if self.kind == "mlm+nsp":
            ids, batch["token_type_ids"], batch["nsp_labels"] = self._pairs(x)
        inputs, targets = mask_tokens(
            ids,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            generator=self.generator,
        )
        batch["idx"] = inputs
        return batch, targets, int((targets != IGNORE_INDEX).sum())

    def _pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T = x.shape
        half = (T - 3) // 2
        a, b = x[:, :half], x[:, half : 2 * half]  # [B, half] each
        labels = (torch.rand(B, generator=self.generator) < 0.5).long()  # 1 = random B (NotNext)
        shift = torch.randint(1, max(B, 2), (B,), generator=self.generator)
        other = (torch.arange(B) + shift) % B
        b = torch.where(labels[:, None].bool() & (other != torch.arange(B))[:, None], b[other], b)
        labels = labels * (other != torch.arange(B)).long()  # a batch of 1 can only be IsNext
        col = lambda v: torch.full((B, 1), v, dtype=x.dtype)  # noqa: E731
        ids = torch.cat([col(self.cls_id), a, col(self.sep_id), b, col(self.sep_id)], dim=1)  # [B, 2*half+3]
        types = torch.cat(
            [torch.zeros(B, half + 2, dtype=torch.long), torch.ones(B, half + 1, dtype=torch.long)], 1
        )
        return ids, types, labels

    def loss(self, model: torch.nn.Module, batch: dict, targets: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """Summed loss of one micro-batch (divide by the accumulated token count, as for every loss)."""
        if self.kind == "clm":
            return token_loss(model(batch["idx"]), targets)[0]
        mlm_logits, nsp_logits = model(batch["idx"], None, batch.get("token_type_ids"))
        loss_sum, _ = mlm_loss(mlm_logits, targets)
        if self.kind == "mlm+nsp":
            nsp_sum, rows = nsp_loss(nsp_logits, batch["nsp_labels"])
            loss_sum = loss_sum + nsp_sum * (max(n_tokens, 1) / rows)
        return loss_sum
