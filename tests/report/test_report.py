"""Tests for lmforge.report: manifests loading, sections present/absent, self-contained HTML, escaping."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from lmforge.errors import InputError
from lmforge.report import load_manifests, render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = (  # in reading order
    "At a glance",
    "Data",
    "Tokenizer",
    "Training",
    "Evaluation",
    "Samples",
    "Model card",
    "Pipeline",
    "Raw metrics",
)


def _stage(run: Path, instance: str, kind: str, started: str, duration: float, **extra) -> Path:
    stage_dir = run / instance
    stage_dir.mkdir(parents=True)
    manifest = {
        "format": 1,
        "stage": kind,
        "instance": instance,
        "status": "complete",
        "metrics": {},
        "started": started,
        "ended": started,
        "duration_s": duration,
    } | extra
    (stage_dir / "manifest.json").write_text(json.dumps(manifest))
    return stage_dir


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_full_run(root: Path) -> Path:
    """A run with every stage kind the report knows, plus directories it must ignore."""
    run = root / "demo-run"
    # Created out of order on purpose: the report must sort by "started".
    gen = _stage(run, "generate", "generate", "2026-11-21T23:05:00Z", 1.5)
    _jsonl(
        gen / "samples.jsonl",
        [
            {"prompt": "Once upon a time", "completion": " there was a cat."},
            {"prompt": "Evil", "completion": "<script>alert('x')</script> & more"},
        ],
    )
    _stage(
        run,
        "eval",
        "eval",
        "2026-11-21T23:04:00Z",
        2.0,
        metrics={"val_loss": 3.14159265, "val_bpb": 1.23456789, "tokens": 4096},
    )
    pre = _stage(
        run,
        "pretrain",
        "pretrain",
        "2026-11-21T23:02:00Z",
        120.0,
        metrics={"val_loss": 3.1},
        cached_last=True,
    )
    rows = [{"step": s, "loss": 5.0 - s / 100, "lr": 1e-3, "tokens_per_s": 1000.0} for s in range(0, 300, 10)]
    rows += [{"step": s, "val_loss": 5.1 - s / 100, "val_bpb": 2.0} for s in (0, 100, 200, 290)]
    _jsonl(pre / "metrics.jsonl", rows)
    with (pre / "metrics.jsonl").open("a") as f:
        f.write('{"step": 300, "loss": 2.')  # torn last line from a crash
    _stage(
        run,
        "tokenizer",
        "tokenizer",
        "2026-11-21T23:01:00Z",
        10.0,
        metrics={"vocab_size": 512, "bytes_per_token": 3.71234},
    )
    data = _stage(
        run, "data", "data", "2026-11-21T23:00:00Z", 5.0, metrics={"docs_train": 900, "docs_val": 100}
    )
    (data / "stats.json").write_text(
        json.dumps(
            {
                "docs_in": 1200,
                "docs_out": 1000,
                "bytes_in": 123456,
                "bytes_out": 100000,
                "drops": {"too_short": 150, "duplicate": 50},
            }
        )
    )
    # Must be ignored: an unfinished stage, a directory without manifest, a broken manifest.
    _stage(run, "finetune.partial", "finetune_sft", "2026-11-21T23:06:00Z", 9.0, metrics={"ghost_metric": 1})
    (run / "scratch").mkdir()
    (run / "broken").mkdir()
    (run / "broken" / "manifest.json").write_text("{not json")
    return run


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    return build_full_run(tmp_path)


def _headings(md: str) -> list[str]:
    return re.findall(r"^## (.+)$", md, flags=re.M)


def test_load_manifests_sorted_by_start_and_skips_unfinished(full_run: Path):
    manifests = load_manifests(full_run)
    assert [m["instance"] for m in manifests] == ["data", "tokenizer", "pretrain", "eval", "generate"]


def test_full_report_has_every_section(full_run: Path):
    md_path, html_path = render_report(full_run)
    assert (md_path, html_path) == (full_run / "report.md", full_run / "report.html")
    md, page = md_path.read_text(), html_path.read_text()
    assert md.startswith("# Run report: demo-run")
    assert "<h1>Run report: demo-run</h1>" in page
    assert _headings(md) == list(SECTIONS)
    assert re.findall(r"<h2>(.+?)</h2>", page) == list(SECTIONS)
    assert "ghost_metric" not in md and "finetune" not in md and "broken" not in md


def test_pipeline_table_order_cached_and_start(full_run: Path):
    md = render_report(full_run)[0].read_text()
    pipeline = md.split("## Pipeline")[1].split("## ")[0]
    order = [
        line.split("|")[1].strip()
        for line in pipeline.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    assert order == ["instance", "data", "tokenizer", "pretrain", "eval", "generate"]
    pretrain_row = next(line for line in pipeline.splitlines() if line.startswith("| pretrain"))
    assert "cached" in pretrain_row and "120.0" in pretrain_row and "2026-11-21T23:02:00Z" in pretrain_row
    assert "cached" not in next(line for line in pipeline.splitlines() if line.startswith("| eval"))


def test_data_tokenizer_and_eval_values(full_run: Path):
    md_path, html_path = render_report(full_run)
    md, page = md_path.read_text(), html_path.read_text()
    data = md.split("## Data")[1].split("\n## ")[0]
    assert "](report_files/data_funnel.png)" in data
    assert "1,200 documents (123 kB) in; dropped 200 (too\\_short 150, duplicate 50)" in data
    assert "1,000 documents (100 kB) out" in data
    assert "<figcaption>Data funnel: 1,200 documents" in page
    assert "bytes\\_per\\_token | 3.712" in md
    evaluation = md.split("## Evaluation")[1].split("\n## ")[0]
    assert (
        "val\\_loss | 3.142" in evaluation and "val\\_bpb | 1.235" in evaluation and "| 4096 |" in evaluation
    )
    assert '<td class="num">1.235</td>' in page


def test_loss_png_written_linked_and_embedded(full_run: Path):
    md_path, html_path = render_report(full_run)
    png_path = full_run / "report_files" / "loss_pretrain.png"
    png = png_path.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    import matplotlib.image

    assert matplotlib.image.imread(png_path).ndim == 3  # decodes as an image
    assert "](report_files/loss_pretrain.png)" in md_path.read_text()
    page = html_path.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert png in [base64.b64decode(e) for e in embedded]  # after the data funnel
    assert "Last train loss 2.1 at step 290" in md_path.read_text()


def test_html_is_self_contained(full_run: Path):
    page = render_report(full_run)[1].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_samples_are_escaped(full_run: Path):
    md_path, html_path = render_report(full_run)
    page, md = html_path.read_text(), md_path.read_text()
    assert "<script>" not in page and "<script>" not in md
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page
    assert "&lt;script&gt;" in md
    assert "<strong>Once upon a time</strong> there was a cat." in page
    assert "**Once upon a time** there was a cat." in md


def test_timing_bars_scale_with_duration(full_run: Path):
    md_path, html_path = render_report(full_run)
    pipeline = md_path.read_text().split("## Pipeline")[1].split("\n## ")[0]
    bars = {
        line.split("|")[1].strip(): line.split("|")[-2].strip() for line in pipeline.splitlines()[4:] if line
    }
    assert len(bars["pretrain"]) == 40 and len(bars["data"]) == 2  # 120 s is the longest; 5 s -> 5/120 * 40
    assert 'style="width: 100.0%"' in html_path.read_text()
    assert "Stage timings" not in md_path.read_text()  # the bars are the Pipeline table's last column


def test_single_stage_run_omits_absent_sections(tmp_path: Path):
    run = tmp_path / "solo"
    _stage(run, "tokenizer", "tokenizer", "2026-01-01T00:00:00Z", 3.0, metrics={"vocab_size": 256})
    md_path, html_path = render_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    assert _headings(md) == ["Tokenizer", "Pipeline", "Raw metrics"]
    for absent in ("Data", "Training", "Evaluation", "Samples"):
        assert f"<h2>{absent}</h2>" not in page
    assert "data:image/png" not in page
    assert not list(run.glob("report_files/*.png"))


def test_stages_without_optional_files_render(tmp_path: Path):
    run = tmp_path / "bare"
    _stage(run, "pretrain", "pretrain", "2026-01-01T00:00:00Z", 3.0)  # no metrics.jsonl
    _stage(run, "generate", "generate", "2026-01-01T00:01:00Z", 1.0)  # no samples.jsonl
    _stage(run, "data", "data", "2026-01-01T00:02:00Z", 1.0)  # no numbers, no stats.json
    md = render_report(run)[0].read_text()
    assert _headings(md) == ["Model card", "Pipeline"]  # a pretrain stage: a model; no metrics: no raw


def test_finetune_curves_are_plotted(tmp_path: Path):
    run = tmp_path / "ft"
    stage = _stage(run, "finetune-sft", "finetune_sft", "2026-01-01T00:00:00Z", 3.0)
    _jsonl(stage / "metrics.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    md = render_report(run)[0].read_text()
    assert "## Training" in md and (run / "report_files" / "loss_finetune-sft.png").exists()


def test_empty_run_and_missing_dir(tmp_path: Path):
    md = render_report(tmp_path)[0].read_text()
    assert _headings(md) == []
    assert load_manifests(tmp_path) == []
    with pytest.raises(InputError):
        render_report(tmp_path / "nope")


def test_a_glance_first_and_the_tokenizer_comparison_as_one_table(tmp_path: Path):
    run = tmp_path / "r"
    _stage(run, "tokenizer", "tokenizer", "2026-11-21T23:01:00Z", 3.0, metrics={
        "vocab_size": 512, "compare_bpe_bytes_per_token": 3.5, "compare_word_bytes_per_token": 4.9,
        "compare_bpe_oov_rate": 0.0, "compare_word_oov_rate": 0.021,
    })  # fmt: skip
    _stage(run, "pretrain", "pretrain", "2026-11-21T23:02:00Z", 430.0, config={"max_steps": 600, "max_time_s": 420},
           metrics={"params": 2_500_000, "tokens": 640_000, "steps": 160, "steps_planned": 600,
                    "stopped_by_time_budget": 1, "train_time_s": 421.0, "tokens_per_s": 1520.0})  # fmt: skip
    _stage(run, "eval", "eval", "2026-11-21T23:10:00Z", 5.0, metrics={"val_bpb": 2.345, "unigram_bpb": 4.5})
    md_path, html_path = render_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    assert _headings(md)[0] == "At a glance"
    glance = md.split("## At a glance")[1].split("\n## ")[0]
    assert "2.345 (unigram baseline 4.500)" in glance and "2.50 M" in glance
    assert "160 of 600 planned: stopped by the time budget (420 s)" in glance
    assert "| metric | bpe | word |" in md and "| bytes\\_per\\_token | 3.5 | 4.9 |" in md
    assert "compare\\_bpe" not in md and "compare_bpe" not in page
    assert page.index("At a glance") < page.index("<h2>Tokenizer</h2>")


@pytest.mark.parametrize("width", [390, 1280])
def test_the_report_fits_a_phone_and_a_desktop(tmp_path: Path, browser_page, width: int):
    """No horizontal scroll at phone width: wide tables scroll inside themselves. Screenshots are kept
    (in the test's directory, and in $LMFORGE_TEST_ARTIFACTS when set)."""
    import os
    import shutil

    run = build_full_run(tmp_path)
    long_name = "a_metric_with_a_very_long_name_that_would_push_a_phone_screen_sideways_" * 2
    _stage(run, "tokenizer2", "tokenizer", "2026-11-21T23:01:30Z", 1.0, metrics={long_name: 1.0} | {
        f"compare_{k}_bytes_per_token": 3.0 for k in ("bpe", "wordpiece", "unigram", "word", "byte", "char")
    })  # fmt: skip
    html_path = render_report(run)[1]
    page = browser_page
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(html_path.as_uri())
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    shot = tmp_path / f"report-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("LMFORGE_TEST_ARTIFACTS"):
        Path(os.environ["LMFORGE_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["LMFORGE_TEST_ARTIFACTS"]) / shot.name)
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at {width} px"
    assert page.locator("h2").first.inner_text() == "At a glance"
    assert page.locator("details summary").first.inner_text() == "data (data): 2 metrics"
    assert not page.locator("details").first.get_attribute("open")  # raw metrics start folded
