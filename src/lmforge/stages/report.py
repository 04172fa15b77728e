"""Write the run report: ``report.md`` and a self-contained ``report.html`` (plots embedded).

The report reads every finished stage of the run: the pipeline with timings and cache hits, data
statistics, tokenizer numbers, training curves, evaluation tables and samples. Sections whose stage
is absent are left out. The report is written into this stage's directory and copied to the top of
the run directory (``runs/NAME/report.html``), where people look for it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.runstore import PARTIAL_SUFFIX, StageContext, read_manifest, run_stage

log = logging.getLogger(__name__)

STAGE = "report"
VERSION = 1
FILES = ("report.md", "report.html", "report_files")


@dataclass
class Config:
    """Options of ``lmforge report``."""

    out: str = opt("", "output stage directory (e.g. runs/x/report); the run is its parent", path=True)
    copy_to_run: bool = opt(True, "also copy report.md, report.html and report_files/ to the run directory")


INPUTS: tuple[str, ...] = ()
AFTER_ALL = True  # runs after every other stage of a recipe and reads all of them


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Render (or return the cached report when no stage changed); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/report)")
    out = Path(cfg.out).expanduser().resolve()
    inputs = {p.name: p for p in _finished_stages(out.parent) if p != out}
    manifest = run_stage(STAGE, cfg, out=out, inputs=inputs, work=render, version=VERSION, force=force)
    if cfg.copy_to_run:
        for name in FILES:
            src, dst = out / name, out.parent / name
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
            elif src.is_file():
                shutil.copyfile(src, dst)
        log.info("report: %s", out.parent / "report.html")
    return manifest


def _finished_stages(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted(
        p
        for p in run_dir.iterdir()
        if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX) and read_manifest(p) is not None
    )


def render(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Render the report of the run into the stage directory."""
    from lmforge.report import render_report

    md, html = render_report(ctx.run_dir, ctx.dir)
    figures = list((ctx.dir / "report_files").glob("*.png"))
    return {"stages": len(ctx.inputs), "figures": len(figures), "html_bytes": html.stat().st_size}
