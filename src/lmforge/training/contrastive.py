"""Sentence embeddings: pooling + normalisation, the InfoNCE loss with in-batch negatives, recall@k.

- ``embed(model, tok, texts)``: one L2-normalised vector per text from a checkpoint model's final hidden
  states (``pool``: ``mean`` over real tokens by default, ``last`` for the decoder's end-of-text token,
  ``cls`` for encoders), texts cut to ``max_len`` tokens and batched by length (less padding).
  ``load_embedder(path)`` opens a checkpoint (a ``finetune.contrastive`` stage records its pooling in
  ``finetune.json``) so ``embed`` works on any saved model.
- ``info_nce(a, b, temperature)``: InfoNCE (van den Oord et al. 2018) over a batch of pairs: row i of
  ``a`` must pick ``b[i]`` among every ``b[j]`` of the batch (the other rows are the negatives, as in
  Karpukhin et al. 2020 and SimCSE, Gao et al. 2021); ``symmetric`` adds the b → a direction (CLIP).
  ``groups`` removes false negatives: rows of one group (e.g. two questions about the same passage)
  are not each other's negatives. Returns the *summed* cross-entropy so the loop's example weighting
  applies.
- ``recall_from_scores(scores, targets, ks)``: the fraction of queries whose own candidate is among
  their k best-scored, ties broken at random and counted by expectation (so a scorer that ties
  everything scores k / M, not 1; BM25 ties often); ``recall_at_k`` does it for cosine similarities.
  ``mrr_from_scores``: the mean reciprocal rank, ties alike; ``retrieval_metrics`` both, for any scorer.

Shape notation: N texts (queries), M candidates, B pairs, D n_embd.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from lmforge.model.heads import embed_batch
from lmforge.runstore import TOKENIZER_FILE
from lmforge.tokenizer.texts import encode_texts, pad_batch


@torch.no_grad()
def embed(
    model: nn.Module,
    tok: Tokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    max_len: int = 0,
) -> torch.Tensor:
    """Sentence vectors ``[N, D]`` (unit length, fp32, on CPU) for ``texts``, in order.

    Texts are cut to ``max_len`` tokens (0 = the model's ``block_size``) as ``encode_texts`` cuts, and
    embedded in batches of similar length.
    """
    was = model.training
    model.eval()
    cfg = model.config
    seqs = encode_texts(tok, texts, cfg.arch, max_len or cfg.block_size)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), cfg.n_embd)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        idx, mask = pad_batch([seqs[i] for i in rows], tok.token_to_id("<|pad|>"))
        out[rows] = embed_batch(model, idx.to(device), mask.to(device), pooling).cpu()
    model.train(was)
    return out


def load_embedder(path: Path, which: str = "best") -> tuple[nn.Module, Tokenizer, str]:
    """``(model, tokenizer, pooling)`` of a checkpoint (pooling from ``finetune.json``, else ``mean``)."""
    from lmforge.model.checkpoint import load_model, read_meta, resolve_checkpoint
    from lmforge.tokenizer.train import load_tokenizer

    ckpt_dir = resolve_checkpoint(Path(path), which)
    model, _ = load_model(ckpt_dir)
    return model, load_tokenizer(ckpt_dir / TOKENIZER_FILE), read_meta(ckpt_dir).get("pooling", "mean")


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.05,
    symmetric: bool = True,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed InfoNCE loss of paired embeddings ``a``, ``b`` ``[B, D]`` (unit length) with in-batch negatives.

    ``groups`` ``[B]`` (optional): rows with equal ids share a positive (the same passage), so they are
    left out of each other's negatives (their logits masked) in both directions.

    Raises:
        ValueError: shapes that differ, ``groups`` not ``[B]``, or a temperature <= 0.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"expected two [B, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if groups is not None and groups.shape != (a.shape[0],):
        raise ValueError(f"groups must be [B] = [{a.shape[0]}], got {tuple(groups.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = a @ b.T / temperature  # [B, B]: cosine similarities / temperature
    target = torch.arange(a.shape[0], device=a.device)
    if groups is not None:  # another row of my group is no negative (symmetric mask: both directions)
        same = (groups[:, None] == groups[None, :]) & (target[:, None] != target[None, :])
        logits = logits.masked_fill(same, float("-inf"))
    loss = F.cross_entropy(logits, target, reduction="sum")
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target, reduction="sum")) / 2
    return loss


def recall_from_scores(
    scores: torch.Tensor, targets: torch.Tensor | None = None, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """``{"recall_at_k": fraction}`` for each k: is query i's own candidate among its k best?

    ``scores`` ``[N, M]`` scores every candidate for every query (higher = better); ``targets`` ``[N]``
    names each query's own candidate (None: candidate i, so M = N). With ``h`` candidates scoring
    strictly higher than the own one and ``t`` others tying with it, a random tie-break puts it in the
    top k with probability ``clamp((k - h) / (t + 1), 0, 1)``; that expectation is averaged.

    Raises:
        ValueError: ``scores`` not 2-D, or targets that do not name one candidate per query.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, M], got {tuple(scores.shape)}")
    n, m = scores.shape
    if targets is None:
        if n != m:
            raise ValueError(f"without targets, scores must be square, got {tuple(scores.shape)}")
        targets = torch.arange(n)
    targets = targets.to(scores.device).long()
    if targets.shape != (n,) or (n and not 0 <= int(targets.min()) <= int(targets.max()) < m):
        raise ValueError(f"targets must be [N] = [{n}] indices below M = {m}")
    own = scores.gather(1, targets[:, None])  # [N, 1]
    higher = (scores > own).sum(dim=1).double()  # [N]
    ties = (scores == own).sum(dim=1).double() - 1  # [N], the own candidate left out
    return {
        f"recall_at_{k}": float(((k - higher) / (ties + 1)).clamp(0.0, 1.0).mean()) if n else 0.0 for k in ks
    }


def mrr_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean reciprocal rank of each query's own candidate ``targets[i]`` among ``scores`` ``[N, M]``.

    Ties are broken at random, in expectation as ``recall_from_scores`` does: with ``h`` candidates
    strictly higher and ``t`` tying, the own one is equally likely at ranks ``h+1 .. h+t+1``, so its
    expected reciprocal rank is ``(H(h+t+1) - H(h)) / (t+1)`` with ``H`` the harmonic numbers
    (``H(n) = digamma(n+1) + euler_gamma``). A smoother selection metric than recall@1 on few queries.
    """
    own = scores.gather(1, targets.to(scores.device).long()[:, None])  # [N, 1]
    higher = (scores > own).sum(dim=1).double()  # [N]
    ties = (scores == own).sum(dim=1).double() - 1  # [N]
    rr = (torch.special.digamma(higher + ties + 2) - torch.special.digamma(higher + 1)) / (ties + 1)
    return float(rr.mean()) if len(rr) else 0.0


def retrieval_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """``recall_from_scores`` for each k plus ``mrr`` (``mrr_from_scores``) of one score matrix
    ``[N, M]``: what ``finetune contrastive`` reports for a model and for BM25 alike."""
    return {**recall_from_scores(scores, targets, ks), "mrr": mrr_from_scores(scores, targets)}


def recall_at_k(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    targets: torch.Tensor | None = None,
) -> dict[str, float]:
    """``recall_from_scores`` of cosine similarities: ``queries`` ``[N, D]`` against ``candidates``
    ``[M, D]`` (unit length), query i's own candidate ``targets[i]`` (None: candidate i)."""
    if queries.dim() != 2 or candidates.dim() != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must be [N, D] and [M, D]"
        )
    return recall_from_scores(queries @ candidates.T, targets, ks)
