"""The report's Fine-tuning section: a stage's report.json tables and metrics, escaped, malformed tables skipped."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.report import render_report


def test_finetune_tables_and_metrics_are_rendered(tmp_path: Path):
    run = tmp_path / "run"
    stage = run / "classify"
    stage.mkdir(parents=True)
    manifest = {
        "format": 1,
        "stage": "finetune.classify",
        "instance": "classify",
        "status": "complete",
        "metrics": {"accuracy": 0.8125, "bow_accuracy": 0.75},
        "started": "2026-01-01T00:00:00Z",
        "duration_s": 1.0,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest))
    tables = [
        {
            "title": "confusion matrix",
            "header": ["true \\ predicted", "<neg>", "pos"],
            "rows": [["<neg>", 3, 1]],
        },
        {"title": "broken", "rows": "not a list"},
    ]
    (stage / "report.json").write_text(json.dumps({"tables": tables}))
    md_path, html_path = render_report(run)
    md, html = md_path.read_text(), html_path.read_text()
    assert "## Fine-tuning" in md and "classify (finetune.classify)" in md
    assert "| &lt;neg&gt; | 3 | 1 |" in md and "0.8125" in md and "broken" not in md
    assert "<h2>Fine-tuning</h2>" in html and "&lt;neg&gt;" in html and "<neg>" not in html
