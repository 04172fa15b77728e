"""Evaluate a pretrained checkpoint on the validation split: loss, perplexity and bits per byte.

It also computes the unigram baseline (the cross-entropy of the validation tokens under the
training set's token frequencies), the number a model that ignores context would reach, so the
report shows how much the transformer learned beyond word counts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, run_stage

log = logging.getLogger(__name__)

STAGE = "eval"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge eval``."""

    model: str = opt("@pretrain", "a checkpoint directory, or a training stage directory", path=True)
    tokenizer: str = opt("@tokenizer", "tokenizer stage directory holding the token shards", path=True)
    out: str = opt("", "output stage directory", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to evaluate")
    split: Literal["val", "train"] = opt("val", "token split to evaluate")
    max_tokens: int = opt(0, "evaluate at most this many tokens (0 = the whole split)")
    batch_size: int = opt(16, "sequences per forward pass")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.max_tokens < 0:
            raise ConfigError("max_tokens", f"must be >= 0, got {self.max_tokens}")


INPUTS = ("model", "tokenizer")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Evaluate (or return the cached result); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/eval)")
    return run_stage(
        STAGE,
        cfg,
        out=cfg.out,
        inputs={"model": cfg.model, "tokenizer": cfg.tokenizer},
        work=evaluate,
        version=VERSION,
        force=force,
    )


def evaluate(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Score the split with the model and with the unigram baseline."""
    from lmforge.eval.lm import evaluate_lm, unigram_entropy
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.shards import open_tokens
    from lmforge.tokenizer.train import load_tokenizer, token_byte_lengths
    from lmforge.training.checkpoint import load_model, resolve_checkpoint

    rt = create_runtime(cfg.device, "fp32", seed=0)
    ckpt_dir = resolve_checkpoint(ctx.inputs["model"], cfg.checkpoint)
    model, mcfg = load_model(ckpt_dir, device=rt.device)
    tok = load_tokenizer(ckpt_dir / "tokenizer.json")
    tokens_dir = ctx.inputs["tokenizer"] / "tokens"
    tokens = open_tokens(tokens_dir / cfg.split)
    r = evaluate_lm(
        model,
        tokens,
        block_size=mcfg.block_size,
        batch_size=cfg.batch_size,
        token_bytes=token_byte_lengths(tok),
        max_tokens=cfg.max_tokens or None,
        device=rt.device,
    )
    scored = tokens[: r["tokens"] + 1] if cfg.max_tokens else tokens
    unigram = unigram_entropy(open_tokens(tokens_dir / "train"), scored, mcfg.vocab_size)
    p = cfg.split
    log.info(
        "%s on %s: loss %.4f | ppl %.2f | bpb %.4f | unigram baseline %.4f nats/token",
        ckpt_dir.name,
        p,
        r["loss"],
        r["perplexity"],
        r["bpb"],
        unigram,
    )
    return {
        f"{p}_loss": r["loss"],
        f"{p}_ppl": r["perplexity"],
        f"{p}_bpb": r["bpb"],
        f"{p}_tokens": r["tokens"],
        f"{p}_bytes": r["bytes"],
        "unigram_loss": unigram,
        "unigram_ppl": math.exp(unigram),
        "loss_below_unigram": unigram - r["loss"],
    }
