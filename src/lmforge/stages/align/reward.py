"""A reward model from preference pairs (stage kind ``align.reward``).

The trunk of any checkpoint (decoder or encoder) gets a ``ScalarHead`` that scores a whole
conversation (prompt + reply) with one number; training maximises the Bradley–Terry likelihood that the
chosen reply scores above the rejected one, ``−log σ(r_w − r_l)`` (Bradley & Terry 1952; Ouyang et al.
2022). Full rankings are read as all their implied pairs (``data.preferences``). The metric is
``rm_pairwise_accuracy``: how often the held-out chosen reply scores higher. The result is a normal
checkpoint plus ``heads.safetensors`` / ``finetune.json``; ``training.align.load_reward_model`` reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, config_inputs, run_stage
from lmforge.training.options import FinetuneOptions

logger = logging.getLogger(__name__)

STAGE = "align.reward"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge align reward``."""

    train: list[str] = opt([], "preference files (.jsonl, optionally compressed)", path=True)
    val: str = opt("", "held-out preference file ('' = hold out val_fraction of train)", path=True)
    pooling: Literal["auto", "last", "mean", "cls"] = opt(
        "auto", "which position(s) the head reads (auto = last for a decoder, mean for an encoder)"
    )
    lr: float = opt(1e-4, "peak learning rate")
    batch_size: int = opt(8, "pairs per micro-batch")
    max_train_examples: int = opt(0, "use at most this many training pairs (0 = all)")

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "at least one preference file is required (--train pairs.jsonl)")
        if self.max_train_examples < 0:
            raise ConfigError("max_train_examples", f"must be >= 0, got {self.max_train_examples}")


INPUTS = ("model", "val")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train the reward model (or return the cached result); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/reward)")
    found = {"model": cfg.model, **config_inputs(cfg, "train", "val")}
    return run_stage(STAGE, cfg, out=cfg.out, inputs=found, work=work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read and encode the pairs, run ``finetune.fit`` on the Bradley–Terry loss, save the best model."""
    from pathlib import Path

    import numpy as np
    import torch

    from lmforge.data.supervised import holdout, log_problems, skipped
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.train import load_tokenizer, special_id
    from lmforge.training import align
    from lmforge.training import finetune as ft
    from lmforge.training.batches import pad_batch

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    ft.restart(ctx)
    trunk, mcfg, ckpt_dir = ft.load_base(
        ctx.inputs["model"], cfg.checkpoint, device=rt.device, dropout=cfg.dropout
    )
    tok_path = ckpt_dir / "tokenizer.json"
    tok = load_tokenizer(tok_path)
    pad_id = special_id(tok, "pad")
    problems: list = []
    train = align.read_preference_split(
        [p for k, p in sorted(ctx.inputs.items()) if k.startswith("train")], problems
    )
    if "val" in ctx.inputs:
        val = align.read_preference_split([ctx.inputs["val"]], problems)
    else:
        train, val = holdout(train, cfg.val_fraction or 0.1, cfg.seed)
    log_problems(problems, "preference data")
    train = train[: cfg.max_train_examples or None]
    # whole conversations of at most block_size tokens (the head reads ids, not next-token targets)
    train_pairs, dropped = align.encode_pairs(tok, train, mcfg.block_size - 1)
    val_pairs, val_dropped = align.encode_pairs(
        tok, val[: cfg.max_eval_examples or None], mcfg.block_size - 1
    )
    if not train_pairs or not val_pairs:
        raise ConfigError(
            "train", f"no usable pairs: {len(train_pairs)} for training, {len(val_pairs)} held out"
        )
    logger.info(
        "%d training pairs, %d held out, %d dropped", len(train_pairs), len(val_pairs), dropped + val_dropped
    )
    pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if mcfg.arch == "decoder" else "mean")
    torch.manual_seed(cfg.seed)
    rm = align.RewardModel(trunk, pooling).to(rt.device)
    device = rt.device

    def scores(pairs: list) -> tuple[torch.Tensor, torch.Tensor]:  # ([n] chosen, [n] rejected)
        idx, mask = pad_batch([c[0] for c, _ in pairs] + [r[0] for _, r in pairs], pad_id)
        return rm(idx.to(device), mask.to(device)).view(2, len(pairs)).unbind(0)

    rng = np.random.default_rng(cfg.seed)

    def next_batch() -> tuple[Any, int]:
        rows = rng.integers(0, len(train_pairs), size=cfg.batch_size)
        return [train_pairs[i] for i in rows], len(rows)

    def loss_sum(pairs: list) -> torch.Tensor:
        return align.bradley_terry_loss(*scores(pairs)).sum()

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        was = rm.training
        rm.eval()
        chosen, rejected = [], []
        for s in range(0, len(val_pairs), 2 * cfg.batch_size):
            c, r = scores(val_pairs[s : s + 2 * cfg.batch_size])
            chosen.append(c)
            rejected.append(r)
        rm.train(was)
        c, r = torch.cat(chosen), torch.cat(rejected)
        return {
            "val_loss": float(align.bradley_terry_loss(c, r).mean()),
            "rm_pairwise_accuracy": float((c > r).float().mean()),
            "rm_margin": float((c - r).mean()),
        }

    result = ft.fit(
        rm,
        cfg,
        next_batch=next_batch,
        loss_sum=loss_sum,
        evaluate=evaluate,
        monitor="val_loss",
        log_metrics=ctx.log_metrics,
    )

    def save(d: Path) -> None:
        align.save_reward_model(d, rm, mcfg, tokenizer_path=tok_path, base=str(ckpt_dir))

    ft.save_best_and_last(ctx.dir / "ckpt", rm, result, save)
    return {
        **result.best_metrics,
        "base_rm_pairwise_accuracy": result.initial_metrics["rm_pairwise_accuracy"],
        "train_loss": result.train_loss,
        "steps": result.steps,
        "best_step": result.best_step,
        "train_pairs": len(train_pairs),
        "val_pairs": len(val_pairs),
        "dropped_pairs": dropped + val_dropped,
        "skipped_records": skipped(problems),
        "train_time_s": result.train_time_s,
    }
