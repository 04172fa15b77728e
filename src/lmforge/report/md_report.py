"""Render a run's sections (``layout.report_sections``) as Markdown: ``report.md`` next to the stages,
figures linked from ``report_files/``.

Text that comes from the run (metric names, prompts, completions) is HTML-escaped, because Markdown
viewers pass raw HTML through, and Markdown punctuation in it is backslash-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from lmforge.report.figures import Image
from lmforge.report.sections import Section, Table

BAR_WIDTH = 40  # characters of the longest stage's timing bar


def to_markdown(name: str, sections: Sequence[Section]) -> str:
    """The whole report as Markdown: a title, then each section (``layout.report_sections``)."""
    return "\n\n".join([f"# Run report: {_text(name)}", *(_section(s) for s in sections)]) + "\n"


def _section(section: Section) -> str:
    """A block section (``report.sections``) as Markdown; a ``details`` block folds its table in a
    ``<details>`` element (GitHub and most viewers render it collapsed)."""
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
        elif kind == "bars" and isinstance(value, Table):
            rows = [[*row[:-1], "" if row[-1] is None else "█" * max(1, round(row[-1] * BAR_WIDTH))]
                    for row in value.rows]  # fmt: skip
            parts.append(_table(value.header, rows))
        elif kind == "details" and isinstance(value, Table):
            summary = html.escape(value.title, quote=False)
            parts.append(
                f"<details><summary>{summary}</summary>\n\n{_table(value.header, value.rows)}\n\n</details>"
            )
        elif kind == "sample":
            parts.append("> " + "  \n> ".join(_sample(*value).split("\n")))
        elif kind == "img" and isinstance(value, Image):
            parts.append(f"![{_text(value.alt_text)}]({value.relpath})")
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
