"""Scaling-law figures (PNG bytes, drawn headless with matplotlib's Agg canvas, no pyplot state).

- ``compute_png``: final val loss against training compute C = 6ND for every sweep point (one colour
  per model size), the compute frontier, each size's fitted curve L(N, C / 6N), the compute-optimal
  envelope L(N_opt(C), D_opt(C)) and, when given, the held-out check (predicted and measured).
- ``isoflop_png``: isoFLOP curves (Hoffmann et al. 2022, fig. 3): for fixed budgets C, the fitted
  loss against N with D = C / 6N, the optimum of each curve marked.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.scaling.laws import ChinchillaLaw, frontier


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def compute_png(
    points: Sequence[dict[str, Any]], law: ChinchillaLaw | None, check: dict[str, Any] | None = None
) -> bytes:
    """Loss against compute. ``points``: dicts with ``n_params``, ``tokens``, ``flops``, ``val_loss``;
    ``check``: optional ``{n_params, tokens, predicted_loss, measured_loss}`` of the held-out model."""
    fig = _figure()
    ax = fig.add_subplot()
    sizes = sorted({int(p["n_params"]) for p in points})
    colours = {n: c for n, c in zip(sizes, _colours(len(sizes)))}
    flops = np.array([p["flops"] for p in points], dtype=float)
    losses = np.array([p["val_loss"] for p in points], dtype=float)
    lo, hi = flops.min() / 2, flops.max() * (4 if check is None else 2)
    if check is not None:
        hi = max(hi, 12.0 * check["n_params"] * check["tokens"])
    grid = np.geomspace(lo, hi, 100)
    for n in sizes:
        mine = [p for p in points if int(p["n_params"]) == n]
        ax.scatter(
            [p["flops"] for p in mine], [p["val_loss"] for p in mine], color=colours[n], s=24, zorder=3
        )
        if law is not None:
            ax.plot(
                grid,
                law.loss(n, grid / (6 * n)),
                color=colours[n],
                linewidth=0.8,
                alpha=0.7,
                label=f"N={n:,}",
            )
    keep = frontier(flops, losses)
    ax.plot(flops[keep], losses[keep], color="black", linewidth=1.5, drawstyle="steps-post", label="frontier")
    if law is not None and law.alpha > 0 and law.beta > 0:
        n_opt, d_opt = law.compute_optimal(grid)
        ax.plot(grid, law.loss(n_opt, d_opt), "k--", linewidth=1.0, label="compute-optimal (fit)")
    if check is not None:
        c = 6.0 * check["n_params"] * check["tokens"]
        ax.scatter([c], [check["predicted_loss"]], marker="x", color="red", s=60, zorder=4, label="predicted")
        if check.get("measured_loss") is not None:
            ax.scatter(
                [c],
                [check["measured_loss"]],
                marker="*",
                color="red",
                s=90,
                zorder=4,
                label="measured (held out)",
            )
    return _finish(
        fig, ax, "training compute C = 6ND (FLOPs)", "final val loss (nats / token)", "Loss against compute"
    )


def isoflop_png(law: ChinchillaLaw, budgets: Sequence[float], points: Sequence[dict[str, Any]] = ()) -> bytes:
    """IsoFLOP curves of the fitted law at ``budgets`` (FLOPs), with each curve's optimum marked and
    the sweep's points (loss against N) in grey."""
    fig = _figure()
    ax = fig.add_subplot()
    sizes = [float(p["n_params"]) for p in points]
    n_lo = min(sizes + [1e3]) / 4
    n_hi = max(sizes + [1e4]) * 16
    ns = np.geomspace(n_lo, n_hi, 200)
    for budget, colour in zip(budgets, _colours(len(budgets))):
        losses = law.loss(ns, budget / (6 * ns))
        ax.plot(ns, losses, color=colour, label=f"C={budget:.2g}")
        best = int(np.argmin(losses))
        ax.scatter([ns[best]], [losses[best]], color=colour, marker="o", s=30, zorder=3)
    if points:
        ax.scatter(
            sizes, [p["val_loss"] for p in points], color="grey", s=12, alpha=0.6, label="sweep points"
        )
    return _finish(
        fig, ax, "non-embedding parameters N", "loss (fit) at D = C / 6N", "IsoFLOP curves of the fitted law"
    )


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str) -> bytes:
    """Log x axis, labels, title, grid and legend as every scaling plot has them; the figure as PNG."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _png(fig)


def _colours(k: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(k, 1))]
