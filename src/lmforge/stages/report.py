"""Write the run report: ``report.md`` and a self-contained ``report.html`` (plots embedded).

``lmforge report RUN`` (the run directory) or ``lmforge report --out RUN/report``. The report reads
every finished stage of the run: the pipeline with timings and cache hits, data statistics, tokenizer
numbers, imported weights (source, architecture, verify result), training curves (loss, lr, grad norm,
tokens/s), evaluation and fine-tuning tables, transfer learning (one table per task: fine-tuned from the
import, from scratch, untouched base, classic baselines), alignment curves (reward, KL, accuracy),
scaling laws, samples, and a model card (intended use, data provenance, results, limitations, bias and
memorisation probes, energy and carbon estimate). Sections whose stage is absent are left out. The
report is written into this stage's directory and copied to the top of the run directory
(``runs/NAME/report.html``), where people look for it.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import PARTIAL_SUFFIX, StageContext, read_manifest, run_stage

log = logging.getLogger(__name__)

STAGE = "report"
VERSION = 3  # 3: imported weights and transfer tables (a cached older report is redrawn)
FILES = ("report.md", "report.html", "report_files")


@dataclass
class Config:
    """Options of ``lmforge report``."""

    out: str = opt("", "output stage directory (e.g. runs/x/report); the run is its parent", path=True)
    copy_to_run: bool = opt(True, "also copy report.md, report.html and report_files/ to the run directory")
    watts_per_core: float = opt(10.0, "model card energy: assumed power per busy CPU core, in watts")
    pue: float = opt(1.0, "model card energy: power usage effectiveness of the machine room (1 = none)")
    grid_g_per_kwh: float = opt(400.0, "model card carbon: grid intensity in gCO2e per kWh (set yours)")
    intended_use: str = opt("", "model card: intended use (empty = the research-and-teaching default)")
    limitations: list[str] = opt([], "model card: known limitations to state besides the automatic ones")

    def validate(self) -> None:
        at_least(self, 0, "watts_per_core", "grid_g_per_kwh")
        if self.pue < 1:
            raise ConfigError("pue", f"must be >= 1 (1 = no overhead), got {self.pue}")


INPUTS: tuple[str, ...] = ()
AFTER_ALL = True  # runs after every other stage of a recipe and reads all of them


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Render (or return the cached report when no stage changed); returns the stage manifest."""
    if not cfg.out:  # checked here too: the stages it reports are found beside ``out``
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/report)")
    out = Path(cfg.out).expanduser().resolve()
    inputs = {p.name: p for p in _finished_stages(out.parent) if p != out}
    manifest = run_stage(STAGE, cfg, out=out, inputs=inputs, work=render, version=VERSION, force=force)
    if cfg.copy_to_run and not manifest.get("dry_run"):
        for name in FILES:
            src, dst = out / name, out.parent / name
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
            elif src.is_file():
                shutil.copyfile(src, dst)
        log.info("report: %s", out.parent / "report.html")
    return manifest


def cli(argv: list[str]) -> int:
    """``lmforge report RUN [options]``: a leading run directory means ``--out RUN/report``; otherwise
    the usual ``[RECIPE.yaml] [options]`` command line."""
    from lmforge.errors import LmforgeError
    from lmforge.log import setup_logging
    from lmforge.stages import invoke as inv

    report = sys.modules[__name__]
    args = list(argv)
    if (
        args
        and not args[0].startswith("-")
        and "=" not in args[0]
        and not args[0].endswith((".yaml", ".yml"))
    ):
        args = [f"out={Path(args[0]) / 'report'}", *args[1:]]
    args, quiet, verbose, want_help = inv.split_global_flags(args)
    if want_help:
        print(inv.help_text("report", report).replace("[RECIPE.yaml]", "[RUN | RECIPE.yaml]", 1))
        return 0
    setup_logging(quiet=quiet, verbose=verbose)
    try:
        manifest = main(inv.config_from_args("report", report, args))
    except LmforgeError as exc:
        print(f"lmforge report: error: {exc}", file=sys.stderr)
        return 2
    inv.print_summary([manifest])
    return 0


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
    from lmforge.report.sections import CardOptions

    card = CardOptions(
        limitations=list(cfg.limitations),
        watts_per_core=cfg.watts_per_core,
        pue=cfg.pue,
        grid_g_per_kwh=cfg.grid_g_per_kwh,
        **({"intended_use": cfg.intended_use} if cfg.intended_use else {}),
    )
    md, html = render_report(ctx.run_dir, ctx.dir, card)
    figures = list((ctx.dir / "report_files").glob("*.png"))
    return {"stages": len(ctx.inputs), "figures": len(figures), "html_bytes": html.stat().st_size}
