"""One scaling-law grid point: a decoder size × a token budget, trained once through the run store.

A point is its own run-store stage (kind ``scaling.point``) in a directory shared by every sweep and
check of the run (``RUN/scaling-points/`` by default). Its cache key is the point's size, token budget,
training recipe and the tokenizer's content hash, so a second sweep over the same grid trains nothing,
a grown grid trains only the new points, and an interrupted sweep resumes at the first unfinished
point (a point itself restarts from scratch: points are small, so they keep no checkpoints).

The loop is the pretrain stage's loop shape reduced to what a scaling point needs, built from the same
library pieces so the math cannot drift: ``BatchLoader`` windows, ``PretrainObjective('clm')``
token-summed loss, ``build_optimizers`` (AdamW param groups), ``lr_at`` (warmup + decay to the point's
own budget, as Hoffmann et al. 2022 do for every point), the one optimiser step of every loop
(``training.step.train_step``: token-weighted backward, clipping, the non-finite check) and
``evaluate_lm`` (val loss, bits per byte). Departures from ``lmforge pretrain``: one process (no DDP), no
gradient accumulation, no checkpoints, no early stopping. It stays a loop of its own rather than calling
the pretrain stage because a library module may not import a stage (``stages/`` sits above ``scaling/``).

Each point records N (non-embedding parameters, Kaplan et al. 2020), D (tokens trained on),
C = 6·N·D, the final validation loss and bits per byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, above, at_least, opt, to_dict
from lmforge.model.config import ModelConfig
from lmforge.runstore import TOKENIZER_FILE, StageContext, run_stage
from lmforge.training.options import device_option

log = logging.getLogger(__name__)

POINT_STAGE = "scaling.point"
POINT_VERSION = 1


@dataclass
class PointRecipe:
    """The one training recipe every point of a sweep shares (only size and token budget vary)."""

    block_size: int = opt(128, "context length of the training windows")
    batch_size: int = opt(16, "sequences per optimiser step")
    lr: float = opt(3e-3, "peak learning rate (AdamW)")
    warmup_fraction: float = opt(0.05, "linear warmup as a fraction of each point's steps")
    schedule: Literal["cosine", "linear", "wsd"] = opt("cosine", "decay to each point's own budget")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of lr")
    weight_decay: float = opt(0.1, "decoupled weight decay on matrices")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    head_dim: int = opt(32, "width of one attention head (n_head = width / head_dim)")
    mlp: Literal["swiglu", "gelu", "relu2"] = opt("swiglu", "MLP kind")
    pos: Literal["rope", "learned", "alibi"] = opt("rope", "position scheme")
    eval_tokens: int = opt(0, "validation tokens per evaluation (0 = the whole val split)")
    seed: int = opt(1337, "seed of initialisation and data order (the same for every point)")
    device: str = device_option(cache=False)
    dtype: str = opt("auto", "auto | fp32 | bf16 | fp16", cache=False)
    threads: int = opt(0, "CPU threads for torch (0 = one per core)", cache=False)

    def validate(self) -> None:
        at_least(self, 1, "block_size", "batch_size", "head_dim")
        above(self, 0, "lr")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError("warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        at_least(self, 0, "weight_decay", "grad_clip", "eval_tokens", "threads")


@dataclass
class PointConfig:
    """The config a point's manifest records: where it reads and writes, its size and budget, the recipe."""

    tokenizer: str = opt("", "tokenizer stage directory (tokenizer.json and tokens/)", path=True)
    out: str = opt("", "the point's directory", path=True)
    n_layer: int = opt(2, "transformer blocks")
    n_embd: int = opt(64, "residual width")
    tokens: int = opt(100_000, "token budget D (rounded up to whole steps)")
    recipe: PointRecipe = opt(PointRecipe(), "training recipe")


def parse_size(size: str) -> tuple[int, int]:
    """``"2x96"`` → ``(n_layer=2, n_embd=96)``; ``"3"`` → the depth preset ``(3, 192)`` (64 per layer).

    Raises:
        ConfigError: not ``L`` or ``LxW`` with positive integers.
    """
    text = str(size).strip().lower()
    layers, _, width = text.partition("x")
    try:
        n_layer = int(layers)
        n_embd = int(width) if width else 64 * n_layer
    except ValueError:
        raise ConfigError("sizes", f"size {size!r} is not 'LAYERSxWIDTH' (e.g. 2x96) or a depth") from None
    if n_layer < 1 or n_embd < 1:
        raise ConfigError("sizes", f"size {size!r} needs layers >= 1 and width >= 1")
    return n_layer, n_embd


def model_config(n_layer: int, n_embd: int, recipe: PointRecipe, vocab_size: int) -> ModelConfig:
    """The decoder of a point: ``n_head = n_embd / head_dim`` (at least 1), the recipe's MLP and positions.

    Raises:
        ConfigError: the width is not a multiple of ``head_dim``, or the model config is invalid.
    """
    if n_embd % recipe.head_dim:
        raise ConfigError("sizes", f"width {n_embd} is not a multiple of recipe.head_dim={recipe.head_dim}")
    cfg = ModelConfig(
        vocab_size=vocab_size,
        block_size=recipe.block_size,
        n_layer=n_layer,
        n_head=max(1, n_embd // recipe.head_dim),
        n_embd=n_embd,
        mlp=recipe.mlp,
        pos=recipe.pos,
    )
    cfg.validate()
    return cfg


def non_embedding_params(cfg: ModelConfig) -> int:
    """N of a decoder without allocating its weights (built on the meta device)."""
    import torch

    from lmforge.model.checkpoint import build_model

    with torch.device("meta"):
        return int(build_model(cfg).num_params(non_embedding=True))


def tokenizer_vocab(tokenizer_dir: Path) -> int:
    """Vocabulary size of a tokenizer stage directory."""
    from lmforge.tokenizer.train import load_tokenizer

    return int(load_tokenizer(Path(tokenizer_dir) / TOKENIZER_FILE).get_vocab_size())


def point_dir_name(n_layer: int, n_embd: int, tokens: int, recipe: PointRecipe) -> str:
    """``L2-d96-D500000-<recipe hash>``: readable, and distinct for distinct recipes (so changing the
    recipe and changing it back finds the old points again)."""
    digest = hashlib.sha256(json.dumps(_hashable(recipe), sort_keys=True).encode()).hexdigest()[:8]
    return f"L{n_layer}-d{n_embd}-D{tokens}-{digest}"


def _hashable(recipe: PointRecipe) -> dict[str, Any]:
    skip = {f.name for f in dataclasses.fields(recipe) if not f.metadata.get("cache", True)}
    return {k: v for k, v in to_dict(recipe).items() if k not in skip}


def run_point(
    tokenizer_dir: Path,
    points_dir: Path,
    n_layer: int,
    n_embd: int,
    tokens: int,
    recipe: PointRecipe,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Train one point (or return its cached manifest); returns the point's manifest."""
    out = Path(points_dir) / point_dir_name(n_layer, n_embd, tokens, recipe)
    cfg = PointConfig(
        tokenizer=str(tokenizer_dir),
        out=str(out),
        n_layer=n_layer,
        n_embd=n_embd,
        tokens=tokens,
        recipe=recipe,
    )
    return run_stage(
        POINT_STAGE,
        cfg,
        out=out,
        inputs={"tokenizer": str(Path(tokenizer_dir).resolve())},
        work=train_point,
        version=POINT_VERSION,
        force=force,
    )


def train_point(cfg: PointConfig, ctx: StageContext) -> dict[str, float]:
    """Train the point's decoder on ``cfg.tokens`` tokens and evaluate it; returns the point's metrics."""
    from lmforge.eval.lm import evaluate_lm
    from lmforge.model.checkpoint import build_model
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.loader import BatchLoader
    from lmforge.tokenizer.shards import open_tokens
    from lmforge.tokenizer.train import load_tokenizer, token_byte_lengths
    from lmforge.training.objectives import PretrainObjective
    from lmforge.training.optim import build_optimizers, lr_at
    from lmforge.training.step import train_step

    r = cfg.recipe
    rt = create_runtime(r.device, r.dtype, r.seed, r.threads)
    tok_dir = ctx.inputs["tokenizer"]
    tok = load_tokenizer(tok_dir / TOKENIZER_FILE)
    mcfg = model_config(cfg.n_layer, cfg.n_embd, r, tok.get_vocab_size())
    model = build_model(mcfg).to(rt.device)
    optimizers = build_optimizers(model, "adamw", r.lr, r.weight_decay)
    objective = PretrainObjective("clm", vocab_size=mcfg.vocab_size, special_ids=())
    loader = BatchLoader(tok_dir / "tokens" / "train", r.batch_size, r.block_size, seed=r.seed)
    tokens_per_step = r.batch_size * r.block_size
    max_steps = max(1, math.ceil(cfg.tokens / tokens_per_step))
    warmup = min(max_steps, round(r.warmup_fraction * max_steps))
    n_params = model.num_params(non_embedding=True)
    log.info(
        "point L%d d%d: N=%d non-embedding params, %d steps of %d tokens",
        cfg.n_layer,
        cfg.n_embd,
        n_params,
        max_steps,
        tokens_per_step,
    )
    start = time.perf_counter()
    loss_ema = math.nan
    model.train()
    for step in range(max_steps):
        t0 = time.perf_counter()
        lr = lr_at(
            step,
            max_steps=max_steps,
            base_lr=r.lr,
            warmup_steps=warmup,
            schedule=r.schedule,
            min_lr_ratio=r.min_lr_ratio,
        )
        batch, targets, n = objective.prepare(*loader.next_batch())
        stats = train_step(
            model,
            optimizers,
            [((batch["idx"].to(rt.device), targets.to(rt.device), n), n)],
            lambda b: objective.loss(model, {"idx": b[0]}, b[1], b[2]),
            lr=lr,
            grad_clip=r.grad_clip,
            step=step,
            autocast=rt.autocast,
        )
        loss, grad_norm = stats.loss, stats.grad_norm
        loss_ema = loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss
        dt = time.perf_counter() - t0
        ctx.log_metrics(
            {
                "step": step + 1,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": n / dt,
                "elapsed_s": time.perf_counter() - start,
            }
        )
    train_time = time.perf_counter() - start
    val = evaluate_lm(
        model,
        open_tokens(tok_dir / "tokens" / "val"),
        block_size=r.block_size,
        batch_size=r.batch_size,
        token_bytes=token_byte_lengths(tok),
        max_tokens=r.eval_tokens or None,
        device=rt.device,
    )
    tokens = max_steps * tokens_per_step
    ctx.log_metrics({"step": max_steps, "val_loss": val["loss"], "val_bpb": val["bpb"]})
    log.info(
        "point L%d d%d D=%d: val loss %.4f, %.1fs", cfg.n_layer, cfg.n_embd, tokens, val["loss"], train_time
    )
    return {
        "n_params": n_params,
        "tokens": tokens,
        "flops": 6.0 * n_params * tokens,
        "val_loss": float(val["loss"]),
        "val_bpb": float(val["bpb"]),
        "train_loss": loss_ema,
        "steps": max_steps,
        "train_time_s": train_time,
        "tokens_per_s": tokens / max(train_time, 1e-9),
    }


def read_sweep(sweep_dir: Path) -> dict[str, Any]:
    """``points.json`` of a finished ``scaling sweep`` stage: tokenizer, points_dir, recipe, points.

    Raises:
        InputError: the directory is not a finished sweep.
    """
    from lmforge.errors import InputError
    from lmforge.runstore import read_manifest

    manifest = read_manifest(Path(sweep_dir))
    if (
        manifest is None
        or manifest.get("stage") != "scaling.sweep"
        or not (Path(sweep_dir) / "points.json").is_file()
    ):
        raise InputError(f"{sweep_dir} is not a finished scaling sweep (run `lmforge scaling sweep` first)")
    return json.loads((Path(sweep_dir) / "points.json").read_text(encoding="utf-8"))
