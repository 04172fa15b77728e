"""Run report: Markdown and self-contained HTML built from the manifests and metrics of a run directory."""

from lmforge.report.collect import load_manifests
from lmforge.report.render import render_report

__all__ = ["load_manifests", "render_report"]
