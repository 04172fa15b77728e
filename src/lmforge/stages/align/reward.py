"""A reward model from preference pairs or full rankings (stage kind ``align.reward``).

The trunk of any checkpoint (decoder or encoder) gets a ``ScalarHead`` that scores a whole
conversation (prompt + reply), cut to ``max_len`` tokens, with one number; ``pooling: auto`` reads the
positions the base's ``pooling.json`` declares (a sentence-transformers import), else the last token
of a decoder or the mean of an encoder. ``loss: bradley_terry`` maximises the likelihood that
the chosen reply scores above the rejected one, ``−log σ(r_w − r_l)`` (Bradley & Terry 1952; Ouyang
et al. 2022), with a full ranking read as all its implied pairs; ``loss: plackett_luce`` maximises the
likelihood of each whole ranking (Plackett 1975, Luce 1959; a pair is a ranking of two, where both
losses agree). Records are held out whole (``val`` or ``val_fraction``), so no ranking is split
between training and evaluation; the best step is chosen by the loss on a selection set carved from
the training records (``val_fraction`` of them, ``select_*`` in the evaluations), so the held-out pairs
are scored once, by the chosen weights: ``rm_pairwise_accuracy`` is how often, over the held-out
implied pairs, the preferred reply scores higher (``base_rm_pairwise_accuracy``: the trunk with its
fresh head, before training). The result is a normal checkpoint plus ``heads.safetensors`` /
``finetune.json``; ``training.reward_model.load_reward_model`` reads it. ``metrics.jsonl`` has every step's
training-batch ``{"step", "accuracy", "reward_margin"}`` beside the evaluations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, opt, retuned
from lmforge.runstore import StageContext, run_config
from lmforge.training.options import SequenceOptions

logger = logging.getLogger(__name__)

STAGE = "align.reward"
VERSION = 1


@dataclass
class Config(SequenceOptions):
    """Options of ``lmforge align reward``."""

    train: list[str] = opt([], "preference files (.jsonl, optionally compressed)", path=True)
    val: str = opt("", "held-out preference file ('' = hold out val_fraction of train)", path=True)
    pooling: Literal["auto", "last", "mean", "cls"] = opt(
        "auto",
        "which position(s) the head reads (auto = the base's pooling.json, else last for a decoder, mean for"
        " an encoder)",
    )
    loss: Literal["bradley_terry", "plackett_luce"] = opt(
        "bradley_terry", "bradley_terry = every implied pair; plackett_luce = each whole ranking"
    )
    lr: float = retuned(SequenceOptions, "lr", 1e-4)
    batch_size: int = opt(8, "pairs (bradley_terry) or rankings (plackett_luce) per micro-batch")
    max_train_examples: int = opt(0, "use at most this many training pairs or rankings (0 = all)")

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "at least one preference file is required (--train pairs.jsonl)")
        at_least(self, 0, "max_train_examples")


INPUTS = ("model", "train", "val")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train the reward model (or return the cached result); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read and encode the pairs, run ``finetune.fit`` on the Bradley–Terry loss, save the best model."""
    from pathlib import Path

    import numpy as np
    import torch

    from lmforge.data.preferences import read_rankings
    from lmforge.data.supervised import log_problems, skipped
    from lmforge.tokenizer.texts import pad_batch
    from lmforge.tokenizer.train import special_id
    from lmforge.training import finetune as ft
    from lmforge.training.losses import bradley_terry_loss, plackett_luce_loss
    from lmforge.training.preferences import encode_pairs, encode_rankings, three_sets
    from lmforge.training.reward_model import RewardModel, save_reward_model

    rt, trunk, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx)
    seq_len = ft.sequence_length(cfg.max_len, mcfg)
    pad_id = special_id(tok, "pad")
    train, select, val, problems = three_sets(read_rankings, ctx.inputs, cfg)
    log_problems(problems, "preference data")
    # whole conversations of at most max_len tokens (the head reads ids, not next-token targets)
    block = seq_len - 1
    if cfg.loss == "plackett_luce":
        examples, dropped = encode_rankings(tok, train[: cfg.max_train_examples or None], block)
    else:
        pairs = [p for r in train for p in r.pairs()][: cfg.max_train_examples or None]
        examples, dropped = encode_pairs(tok, pairs, block)
        examples = [list(pair) for pair in examples]  # a pair is a ranking of two
    val_pairs, val_dropped = encode_pairs(tok, [p for r in val for p in r.pairs()], block)
    select_pairs, select_dropped = encode_pairs(
        tok, [p for r in select for p in r.pairs()][: cfg.max_eval_examples or None], block
    )
    dropped += val_dropped + select_dropped
    if not examples or not val_pairs or not select_pairs:
        raise ConfigError(
            "train",
            f"no usable pairs: {len(examples)} for training, {len(select_pairs)} to choose the step,"
            f" {len(val_pairs)} held out",
        )
    logger.info(
        "%d training %s (%d more pairs choose the best step), %d held-out pairs, %d dropped",
        len(examples),
        "rankings" if cfg.loss == "plackett_luce" else "pairs",
        len(select_pairs),
        len(val_pairs),
        dropped,
    )
    pooling = ft.resolve_pooling(cfg.pooling, ckpt_dir, "last" if mcfg.arch == "decoder" else "mean")
    torch.manual_seed(cfg.seed)
    rm = RewardModel(trunk, pooling).to(rt.device)
    device = rt.device

    def score_rows(rows: list) -> torch.Tensor:  # [len(rows)] rewards
        idx, mask = pad_batch([r[0] for r in rows], pad_id)
        return rm(idx.to(device), mask.to(device))

    def scores(pairs: list) -> tuple[torch.Tensor, torch.Tensor]:  # ([n] chosen, [n] rejected)
        return score_rows([c for c, _ in pairs] + [r for _, r in pairs]).view(2, len(pairs)).unbind(0)

    rng = np.random.default_rng(cfg.seed)
    seen = {"calls": 0, "correct": 0.0, "pairs": 0, "margin": 0.0}

    def next_batch() -> tuple[Any, int]:
        rows = rng.integers(0, len(examples), size=cfg.batch_size)
        return [examples[i] for i in rows], len(rows)

    def loss_sum(batch: list) -> torch.Tensor:  # batch: rankings, each a list of rows best first
        flat = score_rows([row for ranking in batch for row in ranking])
        parts = flat.split([len(r) for r in batch])
        if cfg.loss == "plackett_luce":
            loss = sum(plackett_luce_loss(s[None]).sum() for s in parts)
        else:
            loss = bradley_terry_loss(flat[0::2], flat[1::2]).sum()
        with torch.no_grad():  # the step's training-batch pairwise accuracy and margin (all implied pairs)
            for s in parts:
                d = s[:, None] - s[None, :]  # d[i, j] = s_i − s_j; i ranked above j when i < j
                upper = torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)
                seen["correct"] += float((d[upper] > 0).sum())
                seen["margin"] += float(d[upper].sum())
                seen["pairs"] += int(upper.sum())
        seen["calls"] += 1
        if seen["calls"] % cfg.grad_accum == 0:
            ctx.log_metrics(
                {
                    "step": seen["calls"] // cfg.grad_accum,
                    "accuracy": seen["correct"] / max(seen["pairs"], 1),
                    "reward_margin": seen["margin"] / max(seen["pairs"], 1),
                }
            )
            seen.update(correct=0.0, pairs=0, margin=0.0)
        return loss

    @torch.no_grad()
    def evaluate(pairs: list, prefix: str = "") -> dict[str, float]:
        was = rm.training
        rm.eval()
        chosen, rejected = [], []
        for s in range(0, len(pairs), 2 * cfg.batch_size):
            c, r = scores(pairs[s : s + 2 * cfg.batch_size])
            chosen.append(c)
            rejected.append(r)
        rm.train(was)
        c, r = torch.cat(chosen), torch.cat(rejected)
        return {
            f"{prefix}loss": float(bradley_terry_loss(c, r).mean()),
            f"{prefix}accuracy": float((c > r).float().mean()),
            f"{prefix}margin": float((c - r).mean()),
        }

    before = evaluate(val_pairs)  # the untouched trunk with a fresh head, on the held-out pairs
    result = ft.fit(
        rm,
        cfg,
        next_batch,
        loss_sum,
        lambda: evaluate(select_pairs, "select_"),
        monitor="select_loss",
        log_metrics=ctx.log_metrics,
    )

    def save(d: Path) -> None:
        save_reward_model(d, rm, mcfg, tokenizer_path=tok_path, base=str(ckpt_dir), max_len=seq_len)

    ft.save_best_and_last(ctx.dir / "ckpt", rm, result, save)
    after = evaluate(val_pairs)  # the best step's weights (save_best_and_last), scored once
    return {
        "rm_pairwise_accuracy": after["accuracy"],
        "val_loss": after["loss"],
        "rm_margin": after["margin"],
        "base_rm_pairwise_accuracy": before["accuracy"],
        **result.best_metrics,
        "train_loss": result.train_loss,
        "steps": result.steps,
        "best_step": result.best_step,
        "train_pairs" if cfg.loss == "bradley_terry" else "train_rankings": len(examples),
        "select_pairs": len(select_pairs),
        "val_pairs": len(val_pairs),
        "dropped_pairs": dropped,
        "skipped_records": skipped(problems),
        "train_time_s": result.train_time_s,
    }
