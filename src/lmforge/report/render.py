"""Write a run's report: ``run_dir/report.md`` and a self-contained ``run_dir/report.html``.

Pipeline: ``collect`` (read the run) → ``draw_all`` (PNG files under ``report_files/``) →
``report_sections`` (every section in reading order, as blocks) → ``to_markdown`` and ``to_html``. Each
section appears only when its data exists in the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lmforge.report.collect import collect
from lmforge.report.figures import draw_all
from lmforge.report.html_report import to_html
from lmforge.report.layout import report_sections
from lmforge.report.md_report import to_markdown
from lmforge.report.sections import CardOptions

logger = logging.getLogger(__name__)


def render_report(
    run_dir: Path, out_dir: Path | None = None, card: CardOptions | None = None
) -> tuple[Path, Path]:
    """Render the report of ``run_dir`` into ``out_dir`` (default ``run_dir``); ``card``: the model
    card's stated use, limitations and energy assumptions (defaults: ``CardOptions()``).

    Returns:
        ``(report.md path, report.html path)``; figures go to ``out_dir/report_files/``.

    Raises:
        InputError: if ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    out_dir = run_dir if out_dir is None else Path(out_dir)
    run = collect(run_dir)
    sections = report_sections(run, draw_all(run, out_dir), card or CardOptions())
    md_path = _write_text(out_dir / "report.md", to_markdown(run.name, sections))
    html_path = _write_text(out_dir / "report.html", to_html(run.name, sections))
    logger.info("report of %d stages written to %s and %s", len(run.stages), md_path, html_path)
    return md_path, html_path


def _write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, then rename), so readers never see half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
