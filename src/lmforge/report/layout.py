"""The report's sections in reading order, as plain blocks both renderers draw the same way.

Order, as people read a training report (nanochat's report card, a W&B run page): At a glance → Data
(the funnel figure) → Tokenizer (the kinds compared, one table) → Imported weights → Training (loss
and lr curves) → Evaluation → Fine-tuning → Transfer learning, Alignment, Scaling laws → Samples →
Model card → Pipeline (stages, cache hits, timing bars) → Raw metrics (every manifest metric, one
collapsed block per stage). No table appears twice in the open part of the report: a stage's flat
metrics are shown there only when it wrote no table of its own, and always under Raw metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.report.collect import RunData
from lmforge.report.figures import Image
from lmforge.report.headline import headline_section
from lmforge.report.sections import (
    CardOptions,
    Section,
    Table,
    alignment_section,
    model_card_section,
    scaling_section,
)
from lmforge.report.tables import (
    PIPELINE_HEADER,
    curve_summary,
    metric_rows,
    pipeline_rows,
    table_rows,
    timing_rows,
    tokenizer_tables,
)
from lmforge.report.transfer import import_section, transfer_section

# the trained tokenizer's own numbers shown beside the comparison (the rest: Raw metrics)
TOKENIZER_KEYS = ("vocab_size", "bytes_per_token", "train_tokens", "val_tokens")
LM_SUFFIXES = ("_loss", "_bpb", "_ppl")  # eval metrics of language modelling, shown when no table has them


def report_sections(run: RunData, drawn: Sequence[tuple[Image, str]], card: CardOptions) -> list[Section]:
    """Every section of ``run`` with something to show, in reading order; ``drawn`` is
    ``figures.draw_all``'s ``(image, section)`` list."""

    def images(where: str) -> list[Image]:
        return [image for image, section in drawn if section == where]

    sections = (
        headline_section(run),
        _data(images("data")),
        _tokenizer(run),
        import_section(run),
        _training(run, images("training")),
        _evaluation(run),
        _finetune(run),
        transfer_section(run),
        alignment_section(run, images("alignment")),
        scaling_section(run, images("scaling")),
        _samples(run),
        model_card_section(run, card),
        _pipeline(run),
        _raw(run),
    )
    return [section for section in sections if section is not None]


def _shown(title: str, blocks: list[tuple[str, object]]) -> Section | None:
    """The section ``title`` of ``blocks``, or None (left out of the report) when there are none."""
    return Section(title, blocks) if blocks else None


def _data(images: list[Image]) -> Section | None:
    """The data funnel figure; its caption names every number."""
    return _shown("Data", [("img", image) for image in images])


def _tokenizer(run: RunData) -> Section | None:
    """Per tokenizer stage: its headline numbers, then the kinds it compared as one table (a row per
    metric, a column per kind); a stage that compared nothing shows all its numbers."""
    if not run.tokenizer:
        return None
    section = Section("Tokenizer")
    for instance, metrics in run.tokenizer:
        own, comparison = tokenizer_tables(metrics)
        if len(run.tokenizer) > 1:
            section.blocks.append(("h3", instance))
        if comparison is not None:
            own = [row for row in own if row[0] in TOKENIZER_KEYS] or own
        if own:
            section.blocks.append(("table", Table("", ("metric", "value"), [list(r) for r in own])))
        if comparison is not None:
            section.blocks.append(("table", Table("Tokenizer kinds compared", comparison[0], comparison[1])))
    return section


def _training(run: RunData, images: list[Image]) -> Section | None:
    if not images:
        return None
    curves = {curve.instance: curve for curve in run.curves}
    section = Section("Training")
    for image in images:
        section.blocks += [("h3", image.instance), ("img", image)]
        if image.instance in curves:
            section.blocks.append(("p", curve_summary(curves[image.instance])))
    return section


def _evaluation(run: RunData) -> Section | None:
    """Each eval stage's tables (tasks × checkpoints, probes, the largest bias gap), then its language
    modelling numbers unless a table holds them; with no table, all its metrics."""
    blocks = []
    for instance, metrics in run.evals:
        tables = run.eval_tables.get(instance, [])
        blocks += _tables_then_metrics(instance, tables, metrics, "Language modelling", LM_SUFFIXES)
    return _shown("Evaluation", blocks)


def _finetune(run: RunData) -> Section | None:
    """Each fine-tuning stage's tables; its metrics only when it wrote none (else: Raw metrics)."""
    blocks = []
    for r in run.finetune:
        blocks += _tables_then_metrics(f"{r.instance} ({r.kind})", r.tables, r.metrics, "", ())
    return _shown("Fine-tuning", blocks)


def _tables_then_metrics(
    heading: str, written: list[dict], metrics: dict, title: str, kept: tuple[str, ...]
) -> list[tuple[str, object]]:
    """A stage's ``report.json`` tables, then its metrics: all of them when it wrote no table, else only
    those ending in ``kept`` that no table shows (under ``title``); the rest are left to Raw metrics."""
    tables = [Table(str(t.get("title", "")), t.get("header", []), table_rows(t["rows"])) for t in written]
    shown = {row[0] for t in tables for row in t.rows if row}
    rows = [list(r) for r in metric_rows(metrics)]
    if tables:
        rows = [r for r in rows if r[0].endswith(kept) and r[0] not in shown]
    blocks: list[tuple[str, object]] = [("h3", heading), *(("table", t) for t in tables)]
    if rows:
        blocks.append(("table", Table(title if tables else "", ("metric", "value"), rows)))
    return blocks


def _samples(run: RunData) -> Section | None:
    blocks: list[tuple[str, object]] = []
    for sample_set in run.samples:
        blocks += [("h3", sample_set.instance), *(("sample", pair) for pair in sample_set.samples)]
    return _shown("Samples", blocks)


def _pipeline(run: RunData) -> Section | None:
    """One row per stage with its timing bar (the last cell: the fraction of the longest stage's
    duration, None when the stage recorded none)."""
    if not run.stages:
        return None
    fractions = {name: fraction for name, _, fraction in timing_rows(run)}
    rows = [[*row, fractions.get(row[0])] for row in pipeline_rows(run)]
    return Section("Pipeline", [("bars", Table("", (*PIPELINE_HEADER, ""), rows))])


def _raw(run: RunData) -> Section | None:
    """Every stage's manifest metrics, each stage folded away (HTML ``<details>``); a tokenizer stage's
    ``compare_*`` keys are left to its comparison table, which holds every one of them."""
    blocks = []
    for stage in run.stages:
        rows = tokenizer_tables(stage.metrics)[0] if stage.kind == "tokenizer" else metric_rows(stage.metrics)
        if rows:
            title = f"{stage.instance} ({stage.kind}): {len(rows)} metric{'s' if len(rows) != 1 else ''}"
            blocks.append(("details", Table(title, ("metric", "value"), [list(r) for r in rows])))
    return _shown("Raw metrics", blocks)
