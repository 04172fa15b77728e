"""Train a grid of small decoders (model sizes × token budgets) on one corpus with one recipe.

Every point is its own run-store stage under ``points`` (default ``RUN/scaling-points/``), keyed by its
size, budget, recipe and the tokenizer's content: a second sweep over the same grid trains nothing, a
grown grid trains only its new points, and an interrupted sweep resumes at the first unfinished point.
Writes ``points.json`` (N, D, C = 6ND, val loss and bits per byte of each point) for ``scaling fit``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError, opt, to_dict
from lmforge.runstore import StageContext, run_config, write_json_atomic
from lmforge.scaling.points import PointRecipe, parse_size

log = logging.getLogger(__name__)

STAGE = "scaling.sweep"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge scaling sweep``."""

    tokenizer: str = opt("@tokenizer", "tokenizer stage directory (tokenizer.json and tokens/)", path=True)
    out: str = opt("", "output stage directory (points.json)", path=True)
    points: str = opt("", "directory of the cached points (empty = RUN/scaling-points)", path=True)
    sizes: list[str] = opt(
        ["1x64", "2x64", "2x96", "3x128"], "model sizes: LAYERSxWIDTH (2x96), or a depth (3 = 3x192)"
    )
    tokens: list[int] = opt([125_000, 250_000, 500_000], "token budgets D; every size trains on each")
    recipe: PointRecipe = opt(PointRecipe(), "the training recipe every point shares")

    def validate(self) -> None:
        if not self.sizes:
            raise ConfigError("sizes", "at least one model size is needed")
        for size in self.sizes:
            n_layer, n_embd = parse_size(size)
            if n_embd % self.recipe.head_dim:
                raise ConfigError("sizes", f"width of {size!r} is not a multiple of recipe.head_dim")
        if not self.tokens or any(t < 1 for t in self.tokens):
            raise ConfigError("tokens", f"needs one or more budgets >= 1, got {self.tokens}")


INPUTS = ("tokenizer",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train every point of the grid that is not cached; returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, sweep, version=VERSION, force=force)


def points_dir(cfg: Config) -> Path:
    """Where the points live: ``cfg.points``, or ``scaling-points`` beside the stage directory."""
    return (
        Path(cfg.points).expanduser().resolve()
        if cfg.points
        else Path(cfg.out).resolve().parent / "scaling-points"
    )


def sweep(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Run (or find cached) every point; write ``points.json``."""
    from lmforge.scaling.points import run_point

    where = points_dir(cfg)
    where.mkdir(parents=True, exist_ok=True)
    grid = [(parse_size(size), tokens) for size in cfg.sizes for tokens in sorted(cfg.tokens)]
    rows, trained, cpu = [], 0, 0.0
    for i, ((n_layer, n_embd), tokens) in enumerate(grid, 1):
        log.info("sweep point %d/%d: %dx%d on %d tokens", i, len(grid), n_layer, n_embd, tokens)
        manifest = run_point(ctx.inputs["tokenizer"], where, n_layer, n_embd, tokens, cfg.recipe)
        trained += not manifest.get("cached_last")
        cpu += float(manifest.get("cpu_s") or 0.0)
        m = manifest["metrics"]
        rows.append(
            {
                "size": f"{n_layer}x{n_embd}",
                "n_layer": n_layer,
                "n_embd": n_embd,
                "budget": tokens,
                "n_params": m["n_params"],
                "tokens": m["tokens"],
                "flops": m["flops"],
                "val_loss": m["val_loss"],
                "val_bpb": m["val_bpb"],
                "dir": Path(manifest.get("instance", "")).name,
            }
        )
        ctx.log_metrics({"point": i, **{k: rows[-1][k] for k in ("n_params", "tokens", "val_loss")}})
    write_json_atomic(
        ctx.dir / "points.json",
        {
            "tokenizer": str(ctx.inputs["tokenizer"]),
            "points_dir": str(where),
            "recipe": to_dict(cfg.recipe),
            "points": rows,
        },
    )
    best = min(rows, key=lambda r: r["val_loss"])
    return {
        "points": len(rows),
        "trained": trained,
        "cached": len(rows) - trained,
        "total_flops": sum(r["flops"] for r in rows),
        "points_cpu_s": cpu,
        "best_val_loss": best["val_loss"],
        "best_n_params": best["n_params"],
    }
