"""The data funnel of a run: documents and bytes into the data stage, what each curation step dropped and
why, and what came out — drawn as two horizontal waterfall panels (documents by drop reason, bytes by
step) with a caption that names every number.

Read from the data stage's ``stats.json`` (``steps``: per step ``docs_in/out``, ``bytes_in/out`` and
``drops`` by reason; ``splits``: train and val), else from its manifest metrics (``docs_in``,
``docs_out``, ``bytes_in``, ``bytes_out``, ``dropped_<reason>``) when a run predates per-step stats. A
step that dropped nothing gets no bar and is named in the caption; documents the steps do not account
for (``docs_in`` − drops ≠ ``docs_out``) get an ``unaccounted`` bar, so the bars always add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lmforge.report.collect import DataStats


@dataclass
class Funnel:
    """Documents and bytes through the data stage: ``drops`` are ``(step, reason, documents)``,
    ``byte_steps`` ``(step, bytes removed)`` for steps that changed the byte count (edits too, e.g.
    PII redaction), ``quiet`` the steps that dropped no document. Drawn by ``figures.funnel_png``."""

    docs_in: int
    docs_out: int
    bytes_in: int | None = None
    bytes_out: int | None = None
    drops: list[tuple[str, str, int]] = field(default_factory=list)
    byte_steps: list[tuple[str, int]] = field(default_factory=list)
    quiet: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)  # split name → documents

    @property
    def dropped(self) -> int:
        return sum(n for _, _, n in self.drops)


def funnel_of(data: DataStats | None) -> Funnel | None:
    """The funnel of a data stage, or None when it recorded neither documents in nor documents out."""
    if data is None:
        return None
    stats, metrics = data.stats, data.metrics
    docs_in = _int(stats.get("docs_in", metrics.get("docs_in")))
    docs_out = _int(stats.get("docs_out", metrics.get("docs_out")))
    if docs_in is None or docs_out is None:
        return None
    funnel = Funnel(
        docs_in,
        docs_out,
        _int(stats.get("bytes_in", metrics.get("bytes_in"))),
        _int(stats.get("bytes_out", metrics.get("bytes_out"))),
    )
    steps = [s for s in stats.get("steps", []) if isinstance(s, dict) and isinstance(s.get("step"), str)]
    if steps:
        for step in steps:
            drops = {r: n for r, n in (step.get("drops") or {}).items() if (_int(n) or 0) > 0}
            funnel.drops += [(step["step"], str(r), int(n)) for r, n in sorted(drops.items(), key=_by_count)]
            if not drops:
                funnel.quiet.append(step["step"])
            b_in, b_out = _int(step.get("bytes_in")), _int(step.get("bytes_out"))
            if b_in is not None and b_out is not None and b_in != b_out:
                funnel.byte_steps.append((step["step"], b_in - b_out))
    else:
        drops = stats.get("drops") if isinstance(stats.get("drops"), dict) else {
            k.removeprefix("dropped_"): v for k, v in metrics.items() if k.startswith("dropped_")
        }  # fmt: skip
        positive = {str(r): int(n) for r, n in drops.items() if (_int(n) or 0) > 0}
        funnel.drops = [("", r, n) for r, n in sorted(positive.items(), key=_by_count)]
        if funnel.bytes_in is not None and funnel.bytes_out is not None:
            funnel.byte_steps = [("all steps", funnel.bytes_in - funnel.bytes_out)]
    missing = docs_in - funnel.dropped - docs_out
    if missing:
        funnel.drops.append(("", "unaccounted", missing))
    splits = stats.get("splits")
    if isinstance(splits, dict):
        funnel.splits = {
            str(k): int(v["docs"])
            for k, v in splits.items()
            if isinstance(v, dict) and _int(v.get("docs")) is not None
        }
    return funnel


def funnel_caption(funnel: Funnel) -> str:
    """One paragraph with every number of the figure: in, each drop with its step, steps that dropped
    nothing, out (and its train/val split)."""
    text = f"Data funnel: {funnel.docs_in:,} documents{_bytes(funnel.bytes_in)} in"
    if funnel.drops:
        by_step: dict[str, list[str]] = {}
        for step, reason, n in funnel.drops:
            by_step.setdefault(step, []).append(f"{reason} {n:,}")
        parts = [f"{step}: {', '.join(r)}" if step else ", ".join(r) for step, r in by_step.items()]
        text += f"; dropped {funnel.dropped:,} ({'; '.join(parts)})"
    else:
        text += "; no document dropped"
    text += f"; {funnel.docs_out:,} documents{_bytes(funnel.bytes_out)} out"
    if funnel.splits:
        text += f" ({', '.join(f'{k} {v:,}' for k, v in funnel.splits.items())})"
    text += "."
    if funnel.quiet and funnel.drops:
        text += f" Steps that dropped no document: {', '.join(funnel.quiet)}."
    return text


def bar_label(step: str, reason: str) -> str:
    return f"{step} · {reason}" if step and step != reason else reason


def _by_count(item: tuple[str, Any]) -> tuple[int, str]:
    return -int(item[1]), item[0]


def _bytes(n: int | None) -> str:
    return f" ({human_bytes(n)})" if n is not None else ""


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:#.3g}".rstrip(".") + f" {unit}"
    return f"{n:.0f} B"


def _int(value: Any) -> int | None:
    """``value`` as an int when it is a whole finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if value == int(value) else None
