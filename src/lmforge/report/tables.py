"""Rows shared by the Markdown and HTML renderers: value formatting, pipeline table, timing bars.

Both renderers present the same cells, so the wording and number formats are decided here once.
"""

from __future__ import annotations

import math
from typing import Any

from lmforge.report.collect import Curve, RunData, Stage

PIPELINE_HEADER = ("instance", "stage", "status", "duration (s)", "cached", "started")


def fmt_value(value: Any) -> str:
    """Floats to 4 significant digits, ints exactly, anything else as text."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, formatted value)`` for every metric, in the manifest's order."""
    return [(str(name), fmt_value(value)) for name, value in metrics.items()]


def table_rows(rows: list[Any]) -> list[list[str]]:
    """Cells of a stage-written table (``report.json``), each formatted with ``fmt_value``."""
    return [[fmt_value(cell) for cell in row] if isinstance(row, list) else [fmt_value(row)] for row in rows]


def pipeline_rows(run: RunData) -> list[tuple[str, ...]]:
    """One row per stage, in start order, matching ``PIPELINE_HEADER``."""
    return [
        (
            stage.instance,
            stage.kind,
            str(stage.manifest.get("status", "")),
            _duration_text(stage),
            "cached" if stage.manifest.get("cached_last") is True else "",
            str(stage.manifest.get("started", "")),
        )
        for stage in run.stages
    ]


def timing_rows(run: RunData) -> list[tuple[str, str, float]]:
    """``(instance, duration text, fraction of the longest duration)`` for stages with a duration."""
    timed = [(stage, _duration(stage)) for stage in run.stages]
    timed = [(stage, seconds) for stage, seconds in timed if seconds is not None]
    longest = max((seconds for _, seconds in timed), default=0.0)
    return [
        (stage.instance, f"{seconds:.1f}", seconds / longest if longest > 0 else 0.0)
        for stage, seconds in timed
    ]


def curve_summary(curve: Curve) -> str:
    """One sentence with the last train and validation loss of a curve."""
    parts = []
    if curve.loss:
        step, value = curve.loss[-1]
        parts.append(f"last train loss {value:.4g} at step {step:g}")
    if curve.val_loss:
        step, value = curve.val_loss[-1]
        best = min(v for _, v in curve.val_loss)
        parts.append(f"last val loss {value:.4g} at step {step:g} (best {best:.4g})")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def _duration(stage: Stage) -> float | None:
    """The stage's ``duration_s`` when it is a finite, non-negative number."""
    value = stage.manifest.get("duration_s")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _duration_text(stage: Stage) -> str:
    seconds = _duration(stage)
    return "" if seconds is None else f"{seconds:.1f}"


def tokenizer_tables(
    metrics: dict[str, Any],
) -> tuple[list[tuple[str, str]], tuple[list[str], list[list[str]]] | None]:
    """A tokenizer stage's metrics as ``(its own rows, comparison)``: the ``compare_<kind>_<metric>``
    keys pivoted into one table (a row per metric, a column per tokenizer kind) instead of ~30 flat rows;
    comparison is ``(header, rows)``, or None when the stage compared nothing."""
    own, table = [], {}
    kinds: list[str] = []
    for name, value in metrics.items():
        if not name.startswith("compare_"):
            own.append((str(name), fmt_value(value)))
            continue
        kind, _, metric = name.removeprefix("compare_").partition("_")
        if kind not in kinds:
            kinds.append(kind)
        table.setdefault(metric, {})[kind] = fmt_value(value)
    if not table:
        return own, None
    rows = [[metric, *(values.get(k, "") for k in kinds)] for metric, values in table.items()]
    return own, (["metric", *kinds], rows)
