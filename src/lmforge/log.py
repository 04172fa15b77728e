"""Logging set-up, the one-line-per-step training log, metrics.jsonl, and progress bars.

Library code only calls ``logging.getLogger(__name__)``; :func:`setup_logging` is called once by the
CLI (never at import). Progress bars follow the log level: ``--quiet`` silences them too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = "lmforge"


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Configure the ``lmforge`` logger: INFO to stderr by default, WARNING with quiet, DEBUG verbose."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    for h in list(logger.handlers):
        if getattr(h, "_lmforge_console", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S"))
    handler._lmforge_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def add_file_handler(path: Path) -> logging.Handler:
    """Also write everything the ``lmforge`` logger says to ``path``; returns the handler to remove."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logging.getLogger(ROOT).addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    logging.getLogger(ROOT).removeHandler(handler)
    handler.close()


def format_duration(seconds: float) -> str:
    """``3725.0`` → ``1:02:05``; ``nan`` or negative → ``?``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def step_line(
    step: int, max_steps: int, metrics: dict[str, float], elapsed_s: float, budget_s: float = 0.0
) -> str:
    """One dense log line for a training step: step, loss, lr, tokens/s, elapsed and ETA.

    The ETA is the time the remaining steps take at the pace so far, but never past a time budget
    (``budget_s`` > 0, e.g. ``max_time_s``), where the run stops whatever the step.
    """
    parts = [f"step {step:>{len(str(max_steps))}}/{max_steps}"]
    for key, value in metrics.items():
        if key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key == "tokens_per_s":
            parts.append(f"{value / 1000:.1f}k tok/s")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        else:
            parts.append(f"{key} {value}")
    eta = elapsed_s / step * (max_steps - step) if step > 0 else float("nan")
    if budget_s > 0:
        eta = min(eta, max(0.0, budget_s - elapsed_s)) if eta == eta else max(0.0, budget_s - elapsed_s)
    parts.append(f"elapsed {format_duration(elapsed_s)}")
    parts.append(f"eta {format_duration(eta)}")
    return " | ".join(parts)


TENSORBOARD_DIR = "tb"  # beside metrics.jsonl: `tensorboard --logdir runs/` shows every stage of every run


class MetricsWriter:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed at once so a crash keeps it.

    With the ``tensorboard`` package installed (extra ``tensorboard``), every record that has a ``step``
    is also written as TensorBoard scalars (one per numeric key, at that step) to ``tb/`` beside the
    file, flushed every few seconds; ``truncate_metrics`` rebuilds them when a run resumes. Without the
    package only the JSON lines are written.
    """

    def __init__(self, path: Path, tensorboard: bool = True):
        self.path = Path(path)
        self._fh = self.path.open("a", encoding="utf-8")
        self._tensorboard = tensorboard  # the writer is made at the first record with a step
        self._tb: Any = None

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        if self._tensorboard and isinstance(record.get("step"), int):
            if self._tb is None:
                self._tb = _tensorboard_writer(self.path.parent / TENSORBOARD_DIR)
                self._tensorboard = self._tb is not None
            if self._tb is not None:
                _add_scalars(self._tb, record)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(directory: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``directory``, or None when ``tensorboard`` is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra: metrics.jsonl alone
        logging.getLogger(__name__).debug(
            "tensorboard is not installed: no event files (pip install tensorboard)"
        )
        return None
    return SummaryWriter(log_dir=str(directory), flush_secs=5)


def _add_scalars(writer: Any, record: dict[str, Any]) -> None:
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return  # the final summary row and other records without a step
    for key, value in record.items():
        if (
            key != "step"
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            writer.add_scalar(key, value, step)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: Path, last_step: int) -> int:
    """Rewrite ``metrics.jsonl`` for a run resuming after ``last_step``: keep the rows up to that step, drop
    later ones (the resumed run writes them again), the final summary row, and torn or non-object lines.

    The file is replaced atomically (temporary file, then ``os.replace``); a missing file is left
    missing. Returns how many lines were dropped.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or row.get("final"):
            continue
        if not (isinstance(row.get("step"), int) and row["step"] > last_step):
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    tb = path.parent / TENSORBOARD_DIR
    if tb.is_dir():  # the event files hold the dropped steps too: write them again from the kept rows
        shutil.rmtree(tb)
        writer = _tensorboard_writer(tb)
        if writer is not None:
            for line in kept:
                _add_scalars(writer, json.loads(line))
            writer.close()
    return len(lines) - len(kept)


def progress(items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """Yield ``items`` while showing a rich progress bar on stderr (hidden with --quiet or no TTY)."""
    logger = logging.getLogger(ROOT)
    if not logger.isEnabledFor(logging.INFO) or not sys.stderr.isatty():
        start = time.perf_counter()
        n = 0
        for item in items:
            n += 1
            yield item
        logger.debug("%s: %d items in %.1fs", description, n, time.perf_counter() - start)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
