"""Report sections built as plain blocks (headings, paragraphs, tables, figures) that both renderers
draw the same way: alignment curves, scaling laws, and the model card with its energy and carbon
estimate. Each builder returns ``None`` when the run holds nothing for it, so the section is left out.

The energy estimate (model card) states how each number was obtained: per stage, RAPL package energy
when the run store could read ``/sys/class/powercap`` (whole-machine energy during the stage), else
the stage's measured CPU time (``cpu_s`` + ``cpu_children_s`` in its manifest: user + system seconds
of the process and the workers it waited for) × ``watts_per_core`` × ``pue``. Carbon is energy ×
``grid_g_per_kwh``. Stages whose manifest predates CPU-time recording are listed as not measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.report.collect import ImportedModel, RunData, Stage
from lmforge.report.figures import Image
from lmforge.report.funnel import funnel_of
from lmforge.report.tables import fmt_value

TRAINING_KINDS = ("pretrain", "finetune", "align.", "scaling.")  # stages that train a model
MODEL_KINDS = (*TRAINING_KINDS, "import.")  # ... or bring one in: a run with these gets a model card
PROBE_PREFIXES = ("bias_", "memo_")  # eval metrics of the probes: under their own heading, not results
MODEL_INPUTS = ("model", "compare_to")  # inputs naming the checkpoint a stage starts from, not data


@dataclass
class Table:
    title: str
    header: Sequence[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A titled list of blocks: ``("h3", text)``, ``("p", text)``, ``("ul", [items])``,
    ``("table", Table)``, ``("img", Image)``, ``("sample", (prompt, completion))``, ``("bars", Table)``
    (the last cell of each row: a fraction drawn as a bar, or None) or ``("details", Table)`` (folded,
    its title the summary)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class CardOptions:
    """What the model card cannot measure: stated by whoever runs the report (report stage Config)."""

    intended_use: str = (
        "Research and teaching: a small language model built end to end with lmforge to study how each"
        " stage of the pipeline behaves. Not for production use, advice, or decisions about people."
    )
    limitations: list[str] = field(default_factory=list)
    watts_per_core: float = 10.0
    pue: float = 1.0
    grid_g_per_kwh: float = 400.0


def alignment_section(run: RunData, images: Sequence[Image]) -> Section | None:
    """Reward, KL and accuracy curves of every align stage, with the last value of each series."""
    if not run.align:
        return None
    section = Section("Alignment")
    for curve in run.align:
        section.blocks.append(("h3", curve.instance))
        section.blocks.extend(("img", image) for image in images if image.instance == curve.instance)
        rows = [
            [key, str(len(values)), fmt_value(values[-1][1]), fmt_value(values[-1][0])]
            for key, values in sorted(curve.series.items())
        ]
        section.blocks.append(("table", Table("", ("series", "points", "last value", "at step"), rows)))
    return section


def scaling_section(run: RunData, images: Sequence[Image]) -> Section | None:
    """Fitted laws with intervals, compute-optimal allocations, the held-out check, the figures."""
    if not run.scaling:
        return None
    section = Section("Scaling laws")
    for instance, fit in run.scaling:
        section.blocks.append(("h3", instance))
        c, ci = fit["chinchilla"], fit.get("intervals", {})
        level = float(fit.get("level", 0.95))
        section.blocks.append(
            (
                "p",
                f"L(N, D) = {c['E']:.3f} + {c['A']:.4g} / N^{c['alpha']:.3f} + {c['B']:.4g} / D^{c['beta']:.3f}"
                f", fitted to {len(fit['points'])} points (Huber loss in log space, L-BFGS; relative RMS"
                f" error {100 * float(fit.get('fit_rel_rmse', math.nan)):.2f}%).",
            )
        )
        rows = [
            [k, fmt_value(float(c[k])), *(fmt_value(v) for v in ci.get(k, ("", "")))]
            for k in ("E", "A", "alpha", "B", "beta")
        ]
        for name, label in (("kaplan_L_N", "Kaplan alpha_N"), ("kaplan_L_D", "Kaplan alpha_D")):
            if name in fit:
                rows.append([label, fmt_value(float(fit[name]["alpha"])), "", ""])
        header = ("parameter", "fit", f"{100 * level:g}% low", f"{100 * level:g}% high")
        section.blocks.append(("table", Table("Fitted parameters (bootstrap intervals)", header, rows)))
        optimal = [
            [fmt_value(r["flops"]), fmt_value(r["n_opt"]), fmt_value(r["d_opt"]), fmt_value(r["loss"])]
            for r in fit.get("compute_optimal", [])
            if "n_opt" in r
        ]
        if optimal:
            header = ("compute C (FLOPs)", "optimal N", "optimal D", "predicted loss")
            section.blocks.append(("table", Table("Compute-optimal allocation (C = 6ND)", header, optimal)))
        points = [
            [str(p.get("size", "")), fmt_value(p["n_params"]), fmt_value(p["tokens"]), fmt_value(p["flops"]),
             fmt_value(p["val_loss"]), fmt_value(p.get("val_bpb", ""))]
            for p in fit["points"]
        ]  # fmt: skip
        header = ("size", "N", "D", "C", "val loss", "val bpb")
        section.blocks.append(("table", Table("Sweep points", header, points)))
    for instance, pred in run.predictions:
        rows = [
            ["size", str(pred.get("size", ""))],
            ["N", fmt_value(pred.get("n_params"))],
            ["D", fmt_value(pred.get("tokens"))],
            ["predicted loss", fmt_value(pred["predicted_loss"])],
            ["interval", " – ".join(fmt_value(v) for v in pred.get("interval", []))],
        ]
        if "measured_loss" in pred:
            rows += [
                ["measured loss", fmt_value(pred["measured_loss"])],
                ["relative error", f"{100 * float(pred['prediction_error']):.2f}%"],
            ]
        section.blocks.append(("table", Table(f"Held-out check ({instance})", ("", "value"), rows)))
    section.blocks += [("img", image) for image in images]
    return section


def model_card_section(run: RunData, options: CardOptions) -> Section | None:
    """Intended use, data provenance, evaluation results, limitations, probes, energy and carbon."""
    if not any(stage.kind.startswith(MODEL_KINDS) for stage in run.stages):
        return None
    card = Section("Model card")
    card.blocks += [("h3", "Intended use"), ("p", options.intended_use)]
    card.blocks += _provenance(run)
    card.blocks += _evaluation(run)
    card.blocks += [("h3", "Known limitations"), ("ul", _limitations(run, options))]
    card.blocks += _probes(run)
    card.blocks += _energy(run, options)
    return card


def _provenance(run: RunData) -> list[tuple[str, Any]]:
    imported: list[tuple[str, Any]] = [("p", _imported_text(i)) for i in run.imports]
    data = next((s for s in run.stages if s.kind == "data"), None)
    if data is None and not imported:
        return [
            ("h3", "Data provenance"),
            ("p", "No data stage in this run: the training data is not described here."),
        ]
    if data is None:
        files = _files_read(run)
        if files:
            imported.append(("p", "Data the later stages read (files given directly, no data stage):"))
            imported.append(("table", Table("", ("stage", "input", "file"), files)))
        return [("h3", "Data provenance"), *imported]
    m = data.metrics
    sources = data.manifest.get("config", {}).get("input", [])
    text = f"Sources: {', '.join(map(str, sources)) or 'not recorded'}."
    if _num(m.get("docs_in")) and _num(m.get("docs_out")):
        text += f" {m['docs_out']:,} of {m['docs_in']:,} documents kept"
        if _num(m.get("bytes_out")):
            text += f" ({m['bytes_out']:,} bytes)"
        text += "."
    rows = []
    kinds = [("pii_", "PII removed"), ("lang_", "language"), ("audit_", "representation audit")]
    if funnel_of(run.data) is None:
        kinds.insert(0, ("dropped_", "dropped"))
    else:
        text += " What was dropped and why: the data funnel above."
    for prefix, label in kinds:
        found = {k[len(prefix) :]: v for k, v in m.items() if k.startswith(prefix) and _num(v)}
        if found:
            rows.append([label, ", ".join(f"{k} {fmt_value(v)}" for k, v in sorted(found.items()))])
    blocks: list[tuple[str, Any]] = [
        ("h3", "Data provenance"),
        *imported,
        ("p", text + " Numbers from the data stage's manifest."),
    ]
    if rows:
        blocks.append(("table", Table("", ("what", "counts"), rows)))
    return blocks


def _imported_text(imported: ImportedModel) -> str:
    where = imported.source or imported.location or "an unrecorded source"
    return (
        f"Base weights imported from {where} by stage {imported.stage.instance} ({imported.stage.kind}):"
        " pretrained elsewhere, not in this run, on data this report does not describe (see the source's"
        " documentation)."
    )


def _files_read(run: RunData) -> list[list[str]]:
    """``[stage, input, file name]`` for each data input of a training stage: neither a stage, nor a
    directory, nor the model it starts from."""
    rows = []
    for stage in run.stages:
        inputs = stage.manifest.get("inputs")
        if not stage.kind.startswith(TRAINING_KINDS) or not isinstance(inputs, dict):
            continue
        for name, record in inputs.items():
            path = Path(str(record.get("path", ""))) if isinstance(record, dict) else None
            if path is None or name in MODEL_INPUTS or name in run.lineage.get(stage.instance, {}):
                continue
            if not path.is_dir():
                rows.append([stage.instance, str(name), path.name])
    return rows


def _evaluation(run: RunData) -> list[tuple[str, Any]]:
    rows = []
    for stage in run.stages:
        if stage.kind.startswith(("pretrain", "finetune", "align.")) or stage.kind in (
            "eval",
            "scaling.predict",
        ):
            for key, value in stage.metrics.items():
                keep = key in (
                    "val_loss",
                    "val_bpb",
                    "val_ppl",
                    "prediction_error",
                    "measured_loss",
                    "accuracy",  # finetune.classify's own score (its bag-of-words one ends in _accuracy)
                ) or (key.endswith(("_acc", "_accuracy", "_f1")) and not key.startswith(PROBE_PREFIXES))
                if keep and _num(value):
                    rows.append([stage.instance, key, fmt_value(value)])
    if not rows:
        return []
    return [("h3", "Evaluation results"), ("table", Table("", ("stage", "metric", "value"), rows[:40]))]


def _limitations(run: RunData, options: CardOptions) -> list[str]:
    items = list(options.limitations)
    tokens = [
        s.metrics.get("tokens") for s in run.stages if s.kind == "pretrain" and _num(s.metrics.get("tokens"))
    ]
    params = [
        s.metrics.get("params") for s in run.stages if s.kind == "pretrain" and _num(s.metrics.get("params"))
    ]
    if tokens and params:
        items.append(
            f"A small model ({fmt_value(params[-1])} non-embedding parameters) trained on {fmt_value(tokens[-1])}"
            " tokens: it produces fluent-looking but unreliable text and knows little."
        )
    if run.imports:
        names = ", ".join(i.name for i in run.imports)
        items.append(
            f"Imported base weights ({names}) were pretrained elsewhere: models built on them reflect that"
            " pretraining corpus's topics, language and biases as well as this run's data; this run did not"
            " audit the former."
        )
    if not run.imports or any(s.kind == "pretrain" for s in run.stages):
        items.append(
            "Trained on the run's corpus only; it reflects that corpus's topics, language and biases."
        )
    items.append("No safety tuning or red-teaming unless the run has align stages; outputs are unfiltered.")
    return items


def _probes(run: RunData) -> list[tuple[str, Any]]:
    """The probe numbers of the eval stages, or a pointer to the Probes table an eval stage wrote (the
    Evaluation section shows it: each number once)."""
    rows, tabled = [], []
    for stage in run.stages:
        if any(t.get("title") == "Probes" for t in run.eval_tables.get(stage.instance, [])):
            tabled.append(stage.instance)
        elif stage.kind == "eval":
            rows += [
                [stage.instance, k, fmt_value(v)]
                for k, v in stage.metrics.items()
                if k.startswith(PROBE_PREFIXES) and _num(v)
            ]
    if not rows and not tabled:
        return [
            ("h3", "Bias and memorisation probes"),
            ("p", "Not run (add probes: [bias, memorisation] to the eval stage)."),
        ]
    note = (
        "bias_*: log-likelihood gaps between templated sentences that differ only in a group term (larger"
        " = more preference); memo_*: fraction of train / val windows whose greedy continuation reproduces"
        " the corpus exactly (train above val suggests memorisation). Written by the eval stage."
    )
    if tabled:
        note += f" Values: the Probes table of {', '.join(tabled)} under Evaluation."
    blocks = [("h3", "Bias and memorisation probes"), ("p", note)]
    return blocks + ([("table", Table("", ("stage", "probe", "value"), rows))] if rows else [])


def _energy(run: RunData, options: CardOptions) -> list[tuple[str, Any]]:
    rows, total_wh, unmeasured = [], 0.0, []
    for stage in run.stages:
        wh, how = stage_energy_wh(stage, options)
        if wh is None:
            unmeasured.append(stage.instance)
            continue
        total_wh += wh
        cpu = _cpu(stage)
        rows.append(
            [
                stage.instance,
                fmt_value(round(cpu, 1)) if cpu is not None else "",
                f"{wh:.3g}",
                f"{wh / 1000 * options.grid_g_per_kwh:.3g}",
                how,
            ]
        )
    text = (
        f"Per stage: RAPL package energy when readable, else measured CPU time (core-seconds, user +"
        f" system, of the stage's process and its workers) × {options.watts_per_core:g} W per core ×"
        f" PUE {options.pue:g}; carbon = energy × {options.grid_g_per_kwh:g} gCO2e/kWh. Power per core,"
        " PUE and grid intensity are assumptions set in the report stage's config (watts_per_core, pue,"
        " grid_g_per_kwh), not measurements. Cached stages count the run that produced them."
    )
    blocks: list[tuple[str, Any]] = [("h3", "Energy and carbon estimate"), ("p", text)]
    if rows:
        rows.append(["total", "", f"{total_wh:.3g}", f"{total_wh / 1000 * options.grid_g_per_kwh:.3g}", ""])
        blocks.append(("table", Table("", ("stage", "CPU (s)", "energy (Wh)", "CO2e (g)", "how"), rows)))
    if unmeasured:
        blocks.append(("p", f"Not measured (manifest has no CPU time): {', '.join(unmeasured)}."))
    return blocks


def stage_energy_wh(stage: Stage, options: CardOptions) -> tuple[float | None, str]:
    """``(watt-hours, how it was obtained)`` of one stage, or ``(None, "")`` when nothing was measured."""
    energy_j = stage.manifest.get("energy_j")
    if _num(energy_j):
        return float(energy_j) / 3600 * options.pue, "RAPL counters (whole machine)"
    cpu = _cpu(stage)
    if cpu is None:
        return None, ""
    return cpu * options.watts_per_core * options.pue / 3600, f"CPU time × {options.watts_per_core:g} W/core"


def _cpu(stage: Stage) -> float | None:
    own, kids = stage.manifest.get("cpu_s"), stage.manifest.get("cpu_children_s")
    if not _num(own):
        return None
    return float(own) + (float(kids) if _num(kids) else 0.0)


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
