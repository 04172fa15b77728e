"""Sentence embeddings: pooling + normalisation, the InfoNCE loss with in-batch negatives, recall@k.

- ``embed(model, tok, texts)``: one L2-normalised vector per text from a checkpoint model's final hidden
  states (``pool``: ``mean`` over real tokens by default, ``last`` for the decoder's end-of-text token,
  ``cls`` for encoders). ``load_embedder(path)`` opens a checkpoint (a ``finetune.contrastive`` stage
  records its pooling in ``finetune.json``) so ``embed`` works on any saved model.
- ``info_nce(a, b, temperature)``: InfoNCE (van den Oord et al. 2018) over a batch of pairs: row i of
  ``a`` must pick ``b[i]`` among every ``b[j]`` of the batch (the other rows are the negatives, as in
  Karpukhin et al. 2020 and SimCSE, Gao et al. 2021); ``symmetric`` adds the b → a direction (CLIP).
  Returns the *summed* cross-entropy so the loop's example weighting applies.
- ``recall_at_k(queries, candidates, ks)``: the fraction of queries whose own candidate (same row) is
  among the k most cosine-similar candidates.

Shape notation: N texts, B pairs, D n_embd.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from lmforge.model.heads import pool
from lmforge.training.batches import encode_texts, pad_batch
from lmforge.training.finetune import META_FILE, hidden_states


def embed_batch(model: nn.Module, idx: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Normalised embeddings ``[B, D]`` of a padded batch (keeps the graph: used in training)."""
    return F.normalize(pool(hidden_states(model, idx, mask), mask, pooling).float(), dim=-1)


@torch.no_grad()
def embed(
    model: nn.Module,
    tok: Tokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Sentence vectors ``[N, D]`` (unit length, fp32, on CPU) for ``texts``, in order."""
    was = model.training
    model.eval()
    cfg = model.config
    seqs = encode_texts(tok, texts, cfg.arch, cfg.block_size)
    out = []
    for start in range(0, len(seqs), batch_size):
        idx, mask = pad_batch(seqs[start : start + batch_size], tok.token_to_id("<|pad|>"))
        out.append(embed_batch(model, idx.to(device), mask.to(device), pooling).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.empty(0, cfg.n_embd)


def load_embedder(path: Path, which: str = "best") -> tuple[nn.Module, Tokenizer, str]:
    """``(model, tokenizer, pooling)`` of a checkpoint (pooling from ``finetune.json``, else ``mean``)."""
    from lmforge.tokenizer.train import load_tokenizer
    from lmforge.training.checkpoint import load_model, resolve_checkpoint

    ckpt_dir = resolve_checkpoint(Path(path), which)
    model, _ = load_model(ckpt_dir)
    meta_path = ckpt_dir / META_FILE
    pooling = json.loads(meta_path.read_text()).get("pooling", "mean") if meta_path.is_file() else "mean"
    return model, load_tokenizer(ckpt_dir / "tokenizer.json"), pooling


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05, symmetric: bool = True
) -> torch.Tensor:
    """Summed InfoNCE loss of paired embeddings ``a``, ``b`` ``[B, D]`` (unit length) with in-batch negatives.

    Raises:
        ValueError: shapes that differ, or a temperature <= 0.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"expected two [B, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = a @ b.T / temperature  # [B, B]: cosine similarities / temperature
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target, reduction="sum")
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target, reduction="sum")) / 2
    return loss


def recall_at_k(
    queries: torch.Tensor, candidates: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """``{"recall_at_k": fraction}`` for each k: is ``candidates[i]`` among query i's top k?"""
    if queries.shape != candidates.shape:
        raise ValueError(
            f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must match"
        )
    scores = queries @ candidates.T  # [N, N]
    own = scores.diagonal()[:, None]  # [N, 1]
    rank = (scores > own).sum(dim=1)  # candidates scoring strictly higher than the right one
    return {f"recall_at_{k}": float((rank < k).float().mean()) for k in ks}
