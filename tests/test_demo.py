"""The default recipe end to end, exactly as `make demo` runs it (slow: several minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[1]


def manifest(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "manifest.json").read_text())


@pytest.mark.slow
def test_default_recipe_learns_and_caches(tmp_path):
    out = tmp_path / "tiny"
    assert main(["run", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(out), "-q"]) == 0
    ev = manifest(out / "eval")["metrics"]
    # the model must beat a model that ignores context: the unigram entropy of the corpus
    assert ev["val_loss"] < ev["unigram_loss"] - 0.5, ev
    assert 0 < ev["val_bpb"] < 8
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "val_bpb" in html
    md = (out / "report.md").read_text()
    assert "report_files/loss_pretrain.png" in md and (out / "report_files" / "loss_pretrain.png").is_file()
    samples = [json.loads(x) for x in (out / "generate" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["completion"] for s in samples)

    assert main(["run", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(out), "-q"]) == 0
    stages = json.loads((out / "run.json").read_text())
    assert sorted(stages["cached"]) == sorted(s["instance"] for s in stages["stages"])
