"""Render a run as Markdown: ``report.md`` next to the stages, figures linked from ``report_files/``.

Text that comes from the run (metric names, prompts, completions) is HTML-escaped, because Markdown
viewers pass raw HTML through, and Markdown punctuation in it is backslash-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from lmforge.report.collect import DataStats, RunData
from lmforge.report.figures import Image
from lmforge.report.headline import headline_section
from lmforge.report.sections import Section, Table
from lmforge.report.tables import (
    PIPELINE_HEADER,
    curve_summary,
    metric_rows,
    pipeline_rows,
    table_rows,
    timing_rows,
    tokenizer_tables,
)

BAR_WIDTH = 40  # characters of the longest stage's timing bar


def to_markdown(
    run: RunData,
    images: Sequence[Image],
    middle: Sequence[Section] = (),
    card: Section | None = None,
    early: Sequence[Section] = (),
) -> str:
    """The whole report as Markdown; sections without data are left out. ``early`` (imported weights)
    follow the tokenizer; ``middle`` (transfer learning, alignment, scaling) follow the fine-tuning
    section; ``card`` (the model card) follows the samples."""
    sections = [f"# Run report: {_text(run.name)}"]
    glance = headline_section(run)
    if glance is not None:
        sections.append(_section(glance))
    if run.stages:
        sections.append("## Pipeline\n\n" + _table(PIPELINE_HEADER, pipeline_rows(run)))
    if run.data is not None:
        sections.append(_data_section(run.data))
    if run.tokenizer:
        sections.append(_tokenizer_section(run.tokenizer))
    sections += [_section(section) for section in early]
    if images:
        sections.append(_training_section(run, images))
    if run.evals:
        sections.append(_eval_section(run))
    if run.finetune:
        sections.append(_finetune_section(run))
    sections += [_section(section) for section in middle]
    if run.samples:
        sections.append(_samples_section(run))
    if card is not None:
        sections.append(_section(card))
    timings = timing_rows(run)
    if timings:
        rows = [(name, seconds, "█" * max(1, round(frac * BAR_WIDTH))) for name, seconds, frac in timings]
        sections.append("## Stage timings\n\n" + _table(("instance", "duration (s)", ""), rows))
    return "\n\n".join(sections) + "\n"


def _data_section(data: DataStats) -> str:
    parts = ["## Data"]
    if data.metrics:
        parts.append(_table(("metric", "value"), metric_rows(data.metrics)))
    if data.counts:
        parts.append("### Counts\n\n" + _table(("count", "value"), metric_rows(data.counts)))
    if data.drops:
        parts.append("### Drops by reason\n\n" + _table(("reason", "dropped"), metric_rows(data.drops)))
    return "\n\n".join(parts)


def _tokenizer_section(groups: list[tuple[str, dict]]) -> str:
    """Each tokenizer stage: its metrics, then its comparison of tokenizer kinds as one table."""
    parts = ["## Tokenizer"]
    for instance, metrics in groups:
        own, comparison = tokenizer_tables(metrics)
        parts.append(f"### {_text(instance)}\n\n" + _table(("metric", "value"), own))
        if comparison is not None:
            parts.append("**Tokenizer kinds compared**\n\n" + _table(*comparison))
    return "\n\n".join(parts)


def _eval_section(run: RunData) -> str:
    """Each eval stage: its tables (tasks × checkpoints, probes) then its metrics."""
    parts = ["## Evaluation"]
    for instance, metrics in run.evals:
        parts.append(f"### {_text(instance)}")
        for table in run.eval_tables.get(instance, []):
            parts.append(
                f"**{_text(table['title'])}**\n\n" + _table(table["header"], table_rows(table["rows"]))
            )
        parts.append(_table(("metric", "value"), metric_rows(metrics)))
    return "\n\n".join(parts)


def _finetune_section(run: RunData) -> str:
    parts = ["## Fine-tuning"]
    for result in run.finetune:
        parts.append(f"### {_text(result.instance)} ({_text(result.kind)})")
        for table in result.tables:
            parts.append(
                f"**{_text(table['title'])}**\n\n" + _table(table["header"], table_rows(table["rows"]))
            )
        parts.append(_table(("metric", "value"), metric_rows(result.metrics)))
    return "\n\n".join(parts)


def _training_section(run: RunData, images: Sequence[Image]) -> str:
    curves = {curve.instance: curve for curve in run.curves}
    parts = ["## Training"]
    for image in images:
        name = _text(image.instance)
        parts.append(f"### {name}\n\n![loss curve of {name}]({image.relpath})")
        if image.instance in curves:
            parts.append(curve_summary(curves[image.instance]))
    return "\n\n".join(parts)


def _samples_section(run: RunData) -> str:
    parts = ["## Samples"]
    for sample_set in run.samples:
        parts.append(f"### {_text(sample_set.instance)}")
        for prompt, completion in sample_set.samples:
            parts.append("> " + "  \n> ".join(_sample(prompt, completion).split("\n")))
    return "\n\n".join(parts)


def _section(section: Section) -> str:
    """A block section (``report.sections``) as Markdown."""
    parts = [f"## {_text(section.title)}"]
    for kind, value in section.blocks:
        if kind == "h3":
            parts.append(f"### {_text(value)}")
        elif kind == "p":
            parts.append(_text(value))
        elif kind == "ul":
            parts.append("\n".join(f"- {_text(item)}" for item in value))
        elif kind == "table" and isinstance(value, Table):
            title = f"**{_text(value.title)}**\n\n" if value.title else ""
            parts.append(title + _table(value.header, value.rows))
        elif kind == "img" and isinstance(value, Image):
            parts.append(f"![{_text(value.caption or value.instance)}]({value.relpath})")
            if value.caption:
                parts.append(f"*{_text(value.caption)}*")
    return "\n\n".join(parts)


def _sample(prompt: str, completion: str) -> str:
    """Prompt in bold, then the completion; whitespace around the prompt stays outside the ``**``."""
    core = prompt.strip()
    if not core:
        return _text(prompt + completion)
    lead, trail = prompt[: len(prompt) - len(prompt.lstrip())], prompt[len(prompt.rstrip()) :]
    return f"{lead}**{_text(core)}**{trail}{_text(completion)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: str) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _text(value: str) -> str:
    """``value`` safe for Markdown: HTML-escaped, then Markdown punctuation backslash-escaped."""
    escaped = html.escape(str(value), quote=False)
    for char in "\\`*_[]":
        escaped = escaped.replace(char, "\\" + char)
    return escaped
