"""Contrastive fine-tuning of sentence embeddings on text pairs (stage kind ``finetune.contrastive``).

Each batch holds ``batch_size`` pairs; both sides are embedded by the trunk (pooled, L2-normalised)
and trained with InfoNCE, every other pair of the batch serving as a negative
(``training.contrastive``). Held-out pairs measure retrieval before and after: recall@1 and recall@5
of each query's own partner among all held-out partners; the best checkpoint maximises recall@1.
The checkpoint is a normal one plus ``finetune.json`` naming the pooling, so
``training.contrastive.load_embedder`` + ``embed`` turn any text into the trained vectors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, config_inputs, run_stage, write_json_atomic
from lmforge.training.options import FinetuneOptions

log = logging.getLogger(__name__)

STAGE = "finetune.contrastive"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge finetune contrastive``."""

    train: str = opt("", "pairs: .jsonl {query, positive} / .csv / .tsv, or A<tab>B lines", path=True)
    val: str = opt("", "held-out pairs ('' = hold out val_fraction of train)", path=True)
    pooling: Literal["mean", "last", "cls"] = opt("mean", "how token states become one sentence vector")
    temperature: float = opt(0.05, "InfoNCE temperature (similarities are divided by it)")
    symmetric: bool = opt(True, "also train the positive → query direction")
    lr: float = opt(3e-4, "peak learning rate")

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "a pairs file is required (--train pairs.jsonl)")
        if self.temperature <= 0:
            raise ConfigError("temperature", f"must be > 0, got {self.temperature}")
        if self.batch_size < 2:
            raise ConfigError("batch_size", "in-batch negatives need batch_size >= 2")


INPUTS = ("model", "train", "val")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train the embedder (or return the cached result); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/contrastive)")
    return run_stage(
        STAGE, cfg, out=cfg.out, inputs=config_inputs(cfg, *INPUTS), work=train, version=VERSION, force=force
    )


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read pairs, measure retrieval, train with InfoNCE, measure again."""
    import numpy as np
    import torch

    from lmforge.data.supervised import holdout, log_problems, read_pairs, skipped
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.train import load_tokenizer, special_id
    from lmforge.training import finetune as ft
    from lmforge.training.batches import encode_texts, pad_batch
    from lmforge.training.contrastive import embed, embed_batch, info_nce, recall_at_k

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    device = rt.device
    ft.restart(ctx)
    model, mcfg, ckpt_dir = ft.load_base(
        ctx.inputs["model"], cfg.checkpoint, device=device, dropout=cfg.dropout
    )
    tok_path = ckpt_dir / "tokenizer.json"
    tok = load_tokenizer(tok_path)
    pad_id = special_id(tok, "pad")
    problems: list = []
    pairs = read_pairs(ctx.inputs["train"], problems)
    if "val" in ctx.inputs:
        val_pairs = read_pairs(ctx.inputs["val"], problems)
    else:
        pairs, val_pairs = holdout(pairs, cfg.val_fraction or 0.1, cfg.seed)
    val_pairs = val_pairs[: cfg.max_eval_examples or None]
    log_problems(problems, "pairs")
    if len(pairs) < 2 or len(val_pairs) < 2:
        raise ConfigError(
            "train", f"needs >= 2 training and held-out pairs, got {len(pairs)} and {len(val_pairs)}"
        )
    log.info("%d training pairs, %d held out", len(pairs), len(val_pairs))
    xa = encode_texts(tok, [p.a for p in pairs], mcfg.arch, mcfg.block_size)
    xb = encode_texts(tok, [p.b for p in pairs], mcfg.arch, mcfg.block_size)
    rng = np.random.default_rng(cfg.seed)
    size = min(cfg.batch_size, len(pairs))

    def next_batch() -> tuple[Any, int]:
        rows = rng.choice(len(pairs), size=size, replace=False)
        a = pad_batch([xa[i] for i in rows], pad_id)
        b = pad_batch([xb[i] for i in rows], pad_id)
        return (tuple(t.to(device) for t in a), tuple(t.to(device) for t in b)), size

    def loss_sum(batch: Any) -> torch.Tensor:
        (ia, ma), (ib, mb) = batch
        ea, eb = embed_batch(model, ia, ma, cfg.pooling), embed_batch(model, ib, mb, cfg.pooling)
        return info_nce(ea, eb, cfg.temperature, cfg.symmetric)

    def evaluate() -> dict[str, float]:
        q = embed(model, tok, [p.a for p in val_pairs], pooling=cfg.pooling, device=device)
        c = embed(model, tok, [p.b for p in val_pairs], pooling=cfg.pooling, device=device)
        return recall_at_k(q, c, (1, 5))

    result = ft.fit(
        model,
        cfg,
        next_batch=next_batch,
        loss_sum=loss_sum,
        evaluate=evaluate,
        monitor="recall_at_1",
        mode="max",
        log_metrics=ctx.log_metrics,
    )
    meta = {"method": "contrastive", "pooling": cfg.pooling, "base": str(ckpt_dir)}
    ft.save_best_and_last(
        ctx.dir / "ckpt",
        model,
        result,
        lambda d: ft.save_finetuned(d, model, mcfg, tokenizer_path=tok_path, meta=meta),
    )
    before, after = result.initial_metrics, result.best_metrics
    table = {
        "title": f"retrieval of held-out pairs ({len(val_pairs)} candidates)",
        "header": ["metric", "before", "after"],
        "rows": [[k, before[k], after[k]] for k in after],
    }
    write_json_atomic(ctx.dir / "report.json", {"tables": [table]})
    return {
        **after,
        **{f"{k}_before": v for k, v in before.items()},
        "skipped_records": skipped(problems),
        "steps": result.steps,
        "best_step": result.best_step,
        "train_loss": result.train_loss,
        "train_time_s": result.train_time_s,
        "early_stopped": int(result.stop_reason == "early_stop"),
    }
