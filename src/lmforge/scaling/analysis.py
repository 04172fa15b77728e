"""From sweep points to a scaling-law analysis (the content of ``fit.json``) and predictions from it.

``analyse`` fits Kaplan's L(N) and L(D) and the Chinchilla L(N, D) (``laws``), bootstraps the
Chinchilla parameters, and tabulates the compute-optimal N and D for a few budgets. ``predict`` reads
a prediction, with its bootstrap interval, back out of that analysis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.scaling.laws import (
    ChinchillaLaw,
    bootstrap_chinchilla,
    fit_chinchilla,
    fit_power_law,
    interval,
)

log = logging.getLogger(__name__)

PARAMS = ("E", "A", "alpha", "B", "beta")


def analyse(
    points: Sequence[dict[str, Any]],
    *,
    delta: float,
    starts: int,
    bootstrap: int,
    seed: int,
    level: float,
    budgets: Sequence[float] = (),
) -> dict[str, Any]:
    """The whole analysis of ``points`` (dicts with ``n_params``, ``tokens``, ``flops``, ``val_loss``).

    ``budgets`` (FLOPs) for the compute-optimal table default to 1×, 10× and 100× the largest point.
    """
    n = np.array([p["n_params"] for p in points], dtype=float)
    d = np.array([p["tokens"] for p in points], dtype=float)
    loss = np.array([p["val_loss"] for p in points], dtype=float)
    out: dict[str, Any] = {"points": list(points), "level": level, "huber_delta": delta}

    # Kaplan: each size at its largest budget; each budget at its largest size
    by_n = {
        size: max((p for p in points if p["n_params"] == size), key=lambda p: p["tokens"]) for size in set(n)
    }
    by_d = {t: max((p for p in points if p["tokens"] == t), key=lambda p: p["n_params"]) for t in set(d)}
    for name, chosen, x_key in (("L_N", by_n, "n_params"), ("L_D", by_d, "tokens")):
        rows = sorted(chosen.values(), key=lambda p: p[x_key])
        if len({p[x_key] for p in rows}) >= 2:
            law = fit_power_law([p[x_key] for p in rows], [p["val_loss"] for p in rows])
            out[f"kaplan_{name}"] = {"alpha": law.alpha, "x_c": law.x_c, "points": len(rows)}

    fit = fit_chinchilla(n, d, loss, delta=delta, starts=starts)
    law = fit.law
    pred = law.loss(n, d)
    out["chinchilla"] = law.to_dict()
    out["objective"] = fit.objective
    out["fit_rel_rmse"] = float(np.sqrt(np.mean(((pred - loss) / loss) ** 2)))
    laws = (
        bootstrap_chinchilla(n, d, loss, fit, samples=bootstrap, seed=seed, delta=delta) if bootstrap else []
    )
    out["bootstrap"] = [b.to_dict() for b in laws]
    out["intervals"] = {k: interval([getattr(b, k) for b in laws], level) for k in PARAMS} if laws else {}

    if not budgets:
        budgets = [float(np.max(n * d * 6)) * k for k in (1, 10, 100)]
    out["compute_optimal"] = [_optimal(law, laws, float(c), level) for c in budgets]
    return out


def _optimal(law: ChinchillaLaw, laws: Sequence[ChinchillaLaw], flops: float, level: float) -> dict[str, Any]:
    row: dict[str, Any] = {"flops": flops}
    if law.alpha <= 0 or law.beta <= 0:
        return row
    n_opt, d_opt = law.compute_optimal(flops)
    row.update(n_opt=float(n_opt), d_opt=float(d_opt), loss=float(law.loss(n_opt, d_opt)))
    ok = [b for b in laws if b.alpha > 0 and b.beta > 0]
    if ok:
        allocs = [b.compute_optimal(flops) for b in ok]
        row["n_opt_interval"] = interval([float(a[0]) for a in allocs], level)
        row["d_opt_interval"] = interval([float(a[1]) for a in allocs], level)
    return row


def law_of(analysis: dict[str, Any]) -> ChinchillaLaw:
    """The fitted Chinchilla law of an analysis."""
    return ChinchillaLaw(**{k: float(analysis["chinchilla"][k]) for k in PARAMS})


def predict(analysis: dict[str, Any], n_params: float, tokens: float) -> tuple[float, float, float]:
    """``(predicted loss, interval low, interval high)`` at N, D; the interval from the bootstrap laws
    (``nan`` without a bootstrap)."""
    law = law_of(analysis)
    boot = [float(ChinchillaLaw(**b).loss(n_params, tokens)) for b in analysis.get("bootstrap", [])]
    low, high = interval(boot, float(analysis.get("level", 0.95))) if boot else (math.nan, math.nan)
    return float(law.loss(n_params, tokens)), low, high
