"""The report's first block, "At a glance": what a reader of a training report looks for before anything
else (nanochat's report card, a W&B run summary) — the validation bits per byte beside the baseline the
model must beat, the model's size, the tokens and steps it trained on and why training stopped, and how
long the run took. Built from the manifests alone; a run without a pretraining or eval stage shows what
it has (or nothing)."""

from __future__ import annotations

from typing import Any

from lmforge.report.collect import RunData
from lmforge.report.sections import Section, Table
from lmforge.report.tables import fmt_value


def headline_section(run: RunData) -> Section | None:
    """The "At a glance" section of ``run``, or None when no stage has a headline figure."""
    rows: list[list[str]] = []
    evals = [metrics for _, metrics in run.evals if _num(metrics.get("val_bpb"))]
    if evals:
        m = evals[0]
        unigram = _unigram_bpb(m)
        base = f" (unigram baseline {unigram:.3f})" if unigram is not None else ""
        rows.append(["validation bits per byte", f"{m['val_bpb']:.3f}{base}"])
    train = [s for s in run.stages if s.kind == "pretrain" and s.metrics]
    if train:
        m = train[0].metrics
        if _num(m.get("params")):
            rows.append(["parameters (non-embedding)", f"{m['params'] / 1e6:.2f} M"])
        if _num(m.get("tokens")):
            rows.append(["training tokens", f"{m['tokens'] / 1e6:.2f} M"])
        if _num(m.get("steps")):
            rows.append(["training steps", _steps(m, train[0].config)])
        if _num(m.get("train_time_s")):
            rows.append(["training time", f"{m['train_time_s']:.0f} s"])
        if _num(m.get("tokens_per_s")):
            rows.append(["throughput", f"{m['tokens_per_s']:,.0f} tokens/s"])
    durations = [s.manifest.get("duration_s") for s in run.stages]
    total = sum(d for d in durations if _num(d))
    if rows and total:
        cached = sum(bool(s.manifest.get("cached_last")) for s in run.stages)
        note = f", {cached} of {len(run.stages)} stages cached on the last run" if cached else ""
        rows.append(["whole run", f"{total:.0f} s over {len(run.stages)} stages{note}"])
    if not rows:
        return None
    return Section("At a glance", [("table", Table("", ("", ""), rows))])


def _unigram_bpb(m: dict[str, Any]) -> float | None:
    """The unigram baseline in bits per byte: ``unigram_bpb``, else ``unigram_loss`` (nats per token)
    scaled as ``val_loss`` is to ``val_bpb`` (the same tokens and bytes, so the same factor)."""
    if _num(m.get("unigram_bpb")):
        return float(m["unigram_bpb"])
    if _num(m.get("unigram_loss")) and _num(m.get("val_loss")) and m["val_loss"] > 0:
        return float(m["unigram_loss"]) * float(m["val_bpb"]) / float(m["val_loss"])
    return None


def _steps(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """``600 of 600 planned``, with why training ended when it ended early."""
    done, planned = int(metrics["steps"]), metrics.get("steps_planned") or config.get("max_steps")
    text = f"{done} of {int(planned)} planned" if _num(planned) else str(done)
    if metrics.get("stopped_by_time_budget"):
        budget = config.get("max_time_s")
        text += (
            f": stopped by the time budget ({fmt_value(budget)} s)"
            if budget
            else ": stopped by the time budget"
        )
    elif metrics.get("early_stopped"):
        text += ": early stopping (no validation improvement)"
    return text


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
