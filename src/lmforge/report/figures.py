"""Figures of the run report: one training-loss PNG per training stage, drawn headless with Agg.

Figures use matplotlib's object API with an explicit Agg canvas (``Figure`` + ``FigureCanvasAgg``) rather
than ``pyplot``: no GUI backend is touched, no global figure registry grows, and the caller's matplotlib
backend (e.g. in a notebook) is left as it was.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.report.collect import Curve, RunData

FIGURE_DIR = "report_files"  # next to report.md; the Markdown links into it relatively


@dataclass
class Image:
    """A figure written to disk: ``relpath`` is relative to the run directory, ``png`` its bytes."""

    instance: str
    relpath: str
    png: bytes


def draw_figures(run: RunData, run_dir: Path) -> list[Image]:
    """Draw the loss curve of every training stage into ``run_dir/report_files/loss_<instance>.png``.

    Stale ``loss_*.png`` files from an earlier report are removed first, so the folder matches the report.
    """
    out_dir = Path(run_dir) / FIGURE_DIR
    for stale in out_dir.glob("loss_*.png"):
        stale.unlink()
    images = []
    for curve in run.curves:
        relpath = f"{FIGURE_DIR}/loss_{_safe_name(curve.instance)}.png"
        png = loss_png(curve)
        target = Path(run_dir) / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png)
        images.append(Image(curve.instance, relpath, png))
    return images


def loss_png(curve: Curve) -> bytes:
    """PNG bytes of ``loss`` and ``val_loss`` against ``step`` for one stage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if curve.loss:
        steps, values = zip(*curve.loss)
        ax.plot(steps, values, linewidth=1.0, label="train loss")
    if curve.val_loss:
        steps, values = zip(*curve.val_loss)
        ax.plot(steps, values, marker="o", markersize=3, linewidth=1.5, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(f"{curve.instance}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _safe_name(instance: str) -> str:
    """``instance`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (a safe file name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", instance) or "stage"
