"""Fit scaling laws to a sweep: Kaplan L(N) and L(D), Chinchilla L(N, D) with bootstrap intervals.

Reads the sweep's ``points.json``; writes ``fit.json`` (laws, intervals, the bootstrap laws,
compute-optimal N and D for a few budgets) and two figures: ``scaling_compute.png`` (loss against
compute with the frontier and fitted curves) and ``scaling_isoflop.png`` (isoFLOP curves). The method
and its departures from Kaplan et al. 2020 and Hoffmann et al. 2022 are in ``lmforge.scaling.laws``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, above, at_least, opt
from lmforge.runstore import StageContext, run_config, write_json_atomic

log = logging.getLogger(__name__)

STAGE = "scaling.fit"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge scaling fit``."""

    sweep: str = opt("@sweep", "the scaling sweep stage directory (points.json)", path=True)
    out: str = opt("", "output stage directory (fit.json and figures)", path=True)
    huber_delta: float = opt(1e-3, "Huber threshold on log-loss residuals (Hoffmann et al.: 1e-3)")
    starts: int = opt(16, "L-BFGS starts: the best of Hoffmann et al.'s 4,500-point grid (0 = all of them)")
    bootstrap: int = opt(200, "bootstrap resamples of the points for the intervals (0 = none)")
    level: float = opt(0.95, "confidence level of the bootstrap intervals")
    seed: int = opt(0, "seed of the bootstrap resampling")
    budgets: list[float] = opt(
        [], "compute budgets (FLOPs) for optimal N and D (empty = 1x, 10x, 100x the largest point)"
    )

    def validate(self) -> None:
        above(self, 0, "huber_delta")
        at_least(self, 0, "starts", "bootstrap")
        if not 0 < self.level < 1:
            raise ConfigError("level", f"must be in (0, 1), got {self.level}")
        if any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            raise ConfigError("budgets", f"must be positive FLOP counts, got {self.budgets}")


INPUTS = ("sweep",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Fit (or return the cached fit); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, fit, version=VERSION, force=force)


def fit(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Fit the laws, write ``fit.json`` and the figures; returns the headline numbers."""
    from lmforge.scaling.analysis import analyse, law_of
    from lmforge.scaling.plots import compute_png, isoflop_png
    from lmforge.scaling.points import read_sweep

    sweep = read_sweep(ctx.inputs["sweep"])
    points = sweep["points"]
    if len(points) < 5:
        raise ConfigError("sweep", f"the Chinchilla law has 5 parameters; the sweep has {len(points)} points")
    result = analyse(
        points,
        delta=cfg.huber_delta,
        starts=cfg.starts,
        bootstrap=cfg.bootstrap,
        seed=cfg.seed,
        level=cfg.level,
        budgets=cfg.budgets,
    )
    result.update(tokenizer=sweep["tokenizer"], points_dir=sweep["points_dir"], recipe=sweep["recipe"])
    write_json_atomic(ctx.dir / "fit.json", result)
    law = law_of(result)
    (ctx.dir / "scaling_compute.png").write_bytes(compute_png(points, law))
    (ctx.dir / "scaling_isoflop.png").write_bytes(
        isoflop_png(law, [row["flops"] for row in result["compute_optimal"]], points)
    )
    c = result["chinchilla"]
    log.info(
        "L(N, D) = %.3f + %.4g / N^%.3f + %.4g / D^%.3f (relative rmse %.2f%%)",
        c["E"],
        c["A"],
        c["alpha"],
        c["B"],
        c["beta"],
        100 * result["fit_rel_rmse"],
    )
    metrics: dict[str, float] = {k: float(c[k]) for k in ("alpha", "beta", "E", "A", "B")}
    for key, (low, high) in result["intervals"].items():
        if key in ("alpha", "beta", "E"):
            metrics[f"{key}_low"], metrics[f"{key}_high"] = low, high
    for name in ("L_N", "L_D"):
        if f"kaplan_{name}" in result:
            metrics[f"kaplan_alpha_{name[-1]}"] = float(result[f"kaplan_{name}"]["alpha"])
    metrics["fit_rel_rmse"] = result["fit_rel_rmse"]
    metrics["points"] = len(points)
    best = result["compute_optimal"][-1]
    if "n_opt" in best:
        metrics.update(budget_flops=best["flops"], n_opt=best["n_opt"], d_opt=best["d_opt"])
    return metrics
