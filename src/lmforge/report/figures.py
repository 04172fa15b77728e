"""Figures of the run report, drawn headless with Agg: training curves (loss, and lr, grad norm and
tokens/s when logged) per training stage, alignment curves (reward, KL, accuracy, margins) per align
stage and, for a stage judged by a reward model, its score, KL and win rate over the steps, and the scaling-law figures (``lmforge.scaling.plots``) per scaling fit.

Figures use matplotlib's object API with an explicit Agg canvas (``Figure`` + ``FigureCanvasAgg``) rather
than ``pyplot``: no GUI backend is touched, no global figure registry grows, and the caller's matplotlib
backend (e.g. in a notebook) is left as it was.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.report.collect import Curve, RunData

FIGURE_DIR = "report_files"  # next to report.md; the Markdown links into it relatively


@dataclass
class Image:
    """A figure written to disk: ``relpath`` is relative to the run directory, ``png`` its bytes."""

    instance: str
    relpath: str
    png: bytes
    caption: str = ""


def draw_all(run: RunData, run_dir: Path) -> list[tuple[Image, str]]:
    """Every figure of the report as ``(image, section)``; section is ``training``, ``alignment`` or
    ``scaling``. Stale PNGs of an earlier report are removed first, so the folder matches the report."""
    out_dir = Path(run_dir) / FIGURE_DIR
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    drawn: list[tuple[Image, str]] = []

    def save(name: str, png: bytes, instance: str, section: str, caption: str = "") -> None:
        relpath = f"{FIGURE_DIR}/{name}.png"
        target = Path(run_dir) / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png)
        drawn.append((Image(instance, relpath, png, caption), section))

    for curve in run.curves:
        save(f"loss_{_safe_name(curve.instance)}", loss_png(curve), curve.instance, "training")
    for curve in run.align:
        save(f"align_{_safe_name(curve.instance)}", series_png(curve), curve.instance, "alignment")
        if curve.series.get("win_rate"):
            save(f"judged_{_safe_name(curve.instance)}", judged_png(curve), curve.instance, "alignment",
                 JUDGED_CAPTION)  # fmt: skip
    predictions = dict(run.predictions)
    for instance, fit in run.scaling:
        from lmforge.scaling.analysis import law_of
        from lmforge.scaling.plots import compute_png, isoflop_png

        law = law_of(fit)
        check = next(iter(predictions.values()), None)
        name = _safe_name(instance)
        save(
            f"scaling_compute_{name}",
            compute_png(fit["points"], law, check),
            instance,
            "scaling",
            "Final validation loss against compute: sweep points, frontier, fitted L(N, C/6N) per size,"
            " the compute-optimal envelope and the held-out check (red).",
        )
        budgets = [row["flops"] for row in fit.get("compute_optimal", []) if "flops" in row]
        if budgets:
            save(
                f"scaling_isoflop_{name}",
                isoflop_png(law, budgets, fit["points"]),
                instance,
                "scaling",
                "IsoFLOP curves of the fitted law; dots mark each budget's optimal model size.",
            )
    return drawn


def _axes(n: int) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels in two columns (one row per two panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(7 if cols == 1 else 10, 4 if rows == 1 else 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


SERIES_LABELS = {"lr": "learning rate", "grad_norm": "gradient norm", "tokens_per_s": "tokens / s"}


def loss_png(curve: Curve) -> bytes:
    """PNG bytes of ``loss`` and ``val_loss`` against ``step`` for one stage, with one more panel for
    each of learning rate, gradient norm and throughput that the stage logged."""
    extra = [key for key in SERIES_LABELS if curve.series.get(key)]
    fig, axes = _axes(1 + len(extra))
    ax = axes[0]
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
    for ax, key in zip(axes[1:], extra):
        steps, values = zip(*curve.series[key])
        ax.plot(steps, values, linewidth=1.0)
        ax.set_xlabel("step")
        ax.set_title(SERIES_LABELS[key])
        ax.grid(alpha=0.3)
    return _png(fig)


SMOOTH_FROM = 30  # a series with this many points (one per rollout or batch) also gets a running mean


def series_png(curve: Curve) -> bytes:
    """One panel per logged series of an alignment stage (reward, KL, accuracy, margins) against step;
    a long per-step series (sampled rewards are noisy) is drawn faint with its running mean over
    ``len / 20`` points on top."""
    keys = sorted(curve.series)[:8]
    fig, axes = _axes(len(keys))
    for ax, key in zip(axes, keys):
        steps, values = zip(*curve.series[key])
        if len(steps) < SMOOTH_FROM:
            ax.plot(steps, values, linewidth=1.0, marker="o", markersize=3)
        else:
            w = max(2, len(values) // 20)
            mean = [
                sum(values[max(0, i - w + 1) : i + 1]) / (i + 1 - max(0, i - w + 1))
                for i in range(len(values))
            ]
            ax.plot(steps, values, linewidth=0.6, alpha=0.35)
            ax.plot(steps, mean, linewidth=1.6, label=f"running mean of {w}")
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_title(f"{curve.instance}: {key}")
        ax.grid(alpha=0.3)
    return _png(fig)


JUDGED_CAPTION = (
    "The policy judged against its starting model at each evaluation, on prompts that choose the best step"
    " (never the reported held-out ones): the reward model's mean score of the policy's and the start's"
    " replies, the policy's KL to the reference per reply, and its win rate (0.5 = no change)."
)


def judged_png(curve: Curve) -> bytes:
    """Three panels of an align stage judged by a reward model (``training.judge.WinRate`` rows): the
    score of the policy's replies beside the starting model's, the KL to the reference, the win rate."""
    fig, (score, kl, win) = _axes(3)
    policy = curve.series.get("policy_score") or curve.series.get("score") or []
    for ax, points, label in ((score, policy, "policy"), (score, curve.series.get("base_score", []), "start"),
                              (kl, curve.series.get("kl", []), "KL"), (win, curve.series["win_rate"], "win rate")):  # fmt: skip
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, linewidth=1.2, label=label)
    win.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    win.set_ylim(0, 1)
    for ax, title in (
        (score, "reward-model score"),
        (kl, "KL to the reference (nats / reply)"),
        (win, "win rate"),
    ):
        ax.set_xlabel("step")
        ax.set_title(f"{curve.instance}: {title}")
        ax.grid(alpha=0.3)
    score.legend()
    return _png(fig)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _safe_name(instance: str) -> str:
    """``instance`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (a safe file name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", instance) or "stage"
