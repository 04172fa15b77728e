"""Figures of the run report, drawn headless with Agg: the data funnel (``report.funnel``: documents and
bytes in, dropped by reason, out), training curves (loss, and lr, grad norm and tokens/s when logged)
per training stage, alignment curves (reward, KL, accuracy, margins) per align
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
from lmforge.report.funnel import Funnel, bar_label, funnel_caption, funnel_of, human_bytes

FIGURE_DIR = "report_files"  # next to report.md; the Markdown links into it relatively


@dataclass
class Image:
    """A figure written to disk: ``relpath`` is relative to the run directory, ``png`` its bytes."""

    instance: str
    relpath: str
    png: bytes
    caption: str = ""
    alt: str = ""  # a short text alternative; else the caption (or the instance) is used

    @property
    def alt_text(self) -> str:
        return self.alt or self.caption or self.instance


def draw_all(run: RunData, run_dir: Path) -> list[tuple[Image, str]]:
    """Every figure of the report as ``(image, section)``; section is ``data``, ``training``,
    ``alignment`` or ``scaling``. Stale PNGs of an earlier report are removed first, so the folder
    matches the report."""
    out_dir = Path(run_dir) / FIGURE_DIR
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    drawn: list[tuple[Image, str]] = []

    def save(name: str, png: bytes, instance: str, section: str, caption: str = "", alt: str = "") -> None:
        relpath = f"{FIGURE_DIR}/{name}.png"
        target = Path(run_dir) / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png)
        drawn.append((Image(instance, relpath, png, caption, alt), section))

    funnel = funnel_of(run.data)
    if funnel is not None:
        save("data_funnel", funnel_png(funnel), run.data.instance, "data", funnel_caption(funnel),
             "data funnel: documents and bytes in, dropped by reason, out")  # fmt: skip
    for curve in run.curves:
        save(f"loss_{_safe_name(curve.instance)}", loss_png(curve), curve.instance, "training",
             alt=f"training curves of {curve.instance}")  # fmt: skip
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
    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    return new_figure(n, (7 if cols == 1 else 10, 4 if rows == 1 else 3.2 * rows), cols)


def new_figure(n: int, figsize: tuple[float, float], cols: int) -> tuple[Any, list[Any]]:
    """A headless figure of ``figsize`` inches with ``n`` panels, ``cols`` to a row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = (n + cols - 1) // cols
    fig = Figure(figsize=figsize, dpi=100)
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
    return png_bytes(fig)


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
    return png_bytes(fig)


KEPT, DROPPED, OUT = "#4a7bd0", "#d0574a", "#3a9a5b"  # funnel bars: in, dropped, out
MIN_BAR = 0.004  # narrowest funnel bar, as a fraction of the axis


def funnel_png(funnel: Funnel) -> bytes:
    """PNG bytes of ``funnel_figure``."""
    return png_bytes(funnel_figure(funnel))


def funnel_figure(funnel: Funnel) -> Any:
    """Two waterfall panels: documents (in, one bar per step · reason that dropped some, out) and, when
    bytes were recorded, bytes (in, one bar per step that changed them, out)."""
    drops = [(bar_label(step, reason), n) for step, reason, n in funnel.drops]
    has_bytes = funnel.bytes_in is not None and funnel.bytes_out is not None
    height = 2.0 + 0.32 * max(len(drops), len(funnel.byte_steps), 1)
    fig, axes = new_figure(1 + has_bytes, (11 if has_bytes else 7, height), cols=1 + has_bytes)
    _waterfall(axes[0], "documents: in, dropped by step · reason, out", funnel.docs_in, drops, funnel.docs_out,
               lambda v: f"{v:,.0f}")  # fmt: skip
    if has_bytes:
        _waterfall(axes[1], "bytes: in, removed by each step, out", funnel.bytes_in or 0, funnel.byte_steps,
                   funnel.bytes_out or 0, human_bytes)  # fmt: skip
    return fig


def _waterfall(ax: Any, title: str, start: int, steps: list[tuple[str, int]], end: int, fmt: Any) -> None:
    """Horizontal bars top-down: ``start`` from zero, each step's change floating where it happened
    (red; labelled −n, or +n when it added), ``end`` from zero."""
    labels, lefts, widths, colours, texts = ["in"], [0.0], [float(start)], [KEPT], [fmt(start)]
    level = float(start)
    for label, n in steps:
        level -= n
        labels.append(label)
        lefts.append(min(level, level + n))
        widths.append(max(abs(n), MIN_BAR * max(start, end)))  # a 1-document drop stays visible
        colours.append(DROPPED)
        texts.append(("−" if n > 0 else "+") + fmt(abs(n)))
    labels.append("out")
    lefts.append(0.0)
    widths.append(float(end))
    colours.append(OUT)
    texts.append(fmt(end))
    y = list(range(len(labels)))
    ax.barh(y, widths, left=lefts, color=colours, height=0.6)
    for i, (lo, w, text) in enumerate(zip(lefts, widths, texts)):
        ax.annotate(text, (lo + w, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(start, end, 1) * 1.18)
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_formatter(lambda v, _: fmt(v))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)


JUDGED_CAPTION = (
    "The policy judged against its starting model at each evaluation, on prompts that choose the best step"
    " (never the reported held-out ones): the reward model's mean score of the policy's and the start's"
    " replies, the policy's KL to the reference per reply, and its win rate (0.5 = no change)."
)


def judged_png(curve: Curve) -> bytes:
    """Three panels of an align stage judged by a reward model (``training.judge.WinRate`` rows): the
    score of the policy's replies beside the starting model's, the KL to the reference, the win rate —
    with the second judge's (``check_win_rate``) beside it when the stage had one, so hacking shows."""
    fig, (score, kl, win) = _axes(3)
    policy = curve.series.get("policy_score") or curve.series.get("score") or []
    check = curve.series.get("check_win_rate", [])
    for ax, points, label in ((score, policy, "policy"), (score, curve.series.get("base_score", []), "start"),
                              (kl, curve.series.get("kl", []), "KL"), (win, curve.series["win_rate"], "judge"),
                              (win, check, "second judge")):  # fmt: skip
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
    if check:
        win.legend()
    return png_bytes(fig)


def png_bytes(fig: Any) -> bytes:
    """The figure, laid out tightly, as PNG bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _safe_name(instance: str) -> str:
    """``instance`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (a safe file name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", instance) or "stage"
