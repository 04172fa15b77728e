"""The report's data funnel (documents and bytes in → dropped by step and reason → out, drawn from the data
stage's stats) and the reading order: each section once, no table twice outside the folded raw metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmforge.report import render_report
from lmforge.report.collect import collect
from lmforge.report.figures import funnel_figure
from lmforge.report.funnel import funnel_caption, funnel_of


def _stage(run: Path, instance: str, kind: str, started: str, metrics: dict | None = None) -> Path:
    stage_dir = run / instance
    stage_dir.mkdir(parents=True)
    manifest = {"format": 1, "stage": kind, "instance": instance, "status": "complete",
                "metrics": metrics or {}, "started": started, "duration_s": 2.0}  # fmt: skip
    (stage_dir / "manifest.json").write_text(json.dumps(manifest))
    return stage_dir


def _step(name: str, docs: tuple[int, int], size: tuple[int, int], drops: dict[str, int]) -> dict:
    return {"step": name, "docs_in": docs[0], "docs_out": docs[1], "bytes_in": size[0], "bytes_out": size[1],
            "drops": drops, "counts": {}}  # fmt: skip


def _data_run(root: Path) -> Path:
    """A data stage that drops 30 + 12 documents at quality, none at pii (which shortens text), 5 at dedup."""
    run = root / "run"
    stage = _stage(run, "data", "data", "2026-12-01T00:00:00Z", {"docs_in": 1000, "docs_out": 953})
    steps = [
        _step("quality", (1000, 958), (5_000_000, 4_700_000), {"too_few_words": 12, "dup_lines": 30}),
        _step("pii", (958, 958), (4_700_000, 4_699_000), {}),
        _step("dedup", (958, 953), (4_699_000, 4_680_000), {"exact_duplicate": 5}),
    ]
    stats = {"docs_in": 1000, "docs_out": 953, "bytes_in": 5_000_000, "bytes_out": 4_680_000, "steps": steps,
             "drops": {"dup_lines": 30, "too_few_words": 12, "exact_duplicate": 5},
             "splits": {"train": {"docs": 900, "bytes": 4_400_000}, "val": {"docs": 53, "bytes": 280_000}}}  # fmt: skip
    (stage / "stats.json").write_text(json.dumps(stats))
    return run


def _bars(ax) -> list[tuple[str, float]]:
    """``(label, bar width)`` of a waterfall panel, top to bottom."""
    labels = [t.get_text() for t in ax.get_yticklabels()]
    return list(zip(labels, [p.get_width() for p in ax.patches]))


def test_funnel_bars_and_caption_come_from_the_stats(tmp_path: Path):
    funnel = funnel_of(collect(_data_run(tmp_path)).data)
    assert funnel is not None
    assert funnel.drops == [("quality", "dup_lines", 30), ("quality", "too_few_words", 12),
                            ("dedup", "exact_duplicate", 5)]  # fmt: skip
    assert funnel.quiet == ["pii"] and funnel.byte_steps == [
        ("quality", 300_000),
        ("pii", 1000),
        ("dedup", 19_000),
    ]
    docs, size = funnel_figure(funnel).axes
    assert _bars(docs) == [("in", 1000), ("quality · dup_lines", 30), ("quality · too_few_words", 12),
                           ("dedup · exact_duplicate", 5), ("out", 953)]  # fmt: skip
    assert [label for label, _ in _bars(size)] == ["in", "quality", "pii", "dedup", "out"]
    assert [width for _, width in _bars(size)][1] == 300_000 and _bars(size)[-1][1] == 4_680_000
    left = [p.get_x() for p in docs.patches]
    assert left[1:4] == [970, 958, 953]  # each drop floats where it happened: 1000 − 30, − 12, − 5
    caption = funnel_caption(funnel)
    assert caption == (
        "Data funnel: 1,000 documents (5.00 MB) in; dropped 47 (quality: dup_lines 30, too_few_words 12;"
        " dedup: exact_duplicate 5); 953 documents (4.68 MB) out (train 900, val 53)."
        " Steps that dropped no document: pii."
    )


def test_the_funnel_follows_the_headline_with_its_caption(tmp_path: Path):
    run = _data_run(tmp_path)
    _stage(
        run, "eval", "eval", "2026-12-01T00:05:00Z", {"val_bpb": 2.0, "val_loss": 5.0, "unigram_loss": 6.0}
    )
    md_path, html_path = render_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    assert re.findall(r"^## (.+)$", md, flags=re.M)[:2] == ["At a glance", "Data"]
    assert "2.000 (unigram baseline 2.400)" in md  # unigram_loss scaled as val_loss is to val_bpb
    data = md.split("## Data")[1].split("\n## ")[0]
    assert (
        "![data funnel: documents and bytes in, dropped by reason, out](report_files/data_funnel.png)" in data
    )
    assert "*Data funnel: 1,000 documents (5.00 MB) in; dropped 47 (quality: dup\\_lines 30" in data
    assert (run / "report_files" / "data_funnel.png").read_bytes().startswith(b"\x89PNG")
    figure = page.split("<h2>Data</h2>")[1].split("<h2>")[0]
    assert "data:image/png;base64," in figure and "<figcaption>Data funnel: 1,000 documents" in figure


def test_a_data_stage_that_dropped_nothing_and_an_older_one_from_metrics(tmp_path: Path):
    run = tmp_path / "clean"
    stage = _stage(run, "data", "data", "2026-12-01T00:00:00Z")
    stats = {"docs_in": 10, "docs_out": 10, "bytes_in": 900, "bytes_out": 900,
             "steps": [_step("quality", (10, 10), (900, 900), {}), _step("dedup", (10, 10), (900, 900), {})]}  # fmt: skip
    (stage / "stats.json").write_text(json.dumps(stats))
    funnel = funnel_of(collect(run).data)
    assert funnel is not None and funnel.drops == [] and funnel.quiet == ["quality", "dedup"]
    assert [label for label, _ in _bars(funnel_figure(funnel).axes[0])] == ["in", "out"]
    assert (
        funnel_caption(funnel)
        == "Data funnel: 10 documents (900 B) in; no document dropped; 10 documents (900 B) out."
    )
    # a run from before per-step stats: the manifest's dropped_<reason>; what they miss is "unaccounted"
    old = tmp_path / "old"
    _stage(
        old, "data", "data", "2026-12-01T00:00:00Z", {"docs_in": 100, "docs_out": 90, "dropped_language": 7}
    )
    funnel = funnel_of(collect(old).data)
    assert funnel is not None and funnel.drops == [("", "language", 7), ("", "unaccounted", 3)]
    assert [label for label, _ in _bars(funnel_figure(funnel).axes[0])] == [
        "in",
        "language",
        "unaccounted",
        "out",
    ]
    assert len(funnel_figure(funnel).axes) == 1  # no bytes recorded: no bytes panel


def test_no_data_stage_no_funnel(tmp_path: Path):
    run = tmp_path / "run"
    _stage(run, "tokenizer", "tokenizer", "2026-12-01T00:00:00Z", {"vocab_size": 256})
    md = render_report(run)[0].read_text()
    assert "## Data" not in md and not list(run.glob("report_files/*.png"))


def test_sections_in_reading_order_and_no_table_twice_outside_the_raw_metrics(tmp_path: Path):
    run = _data_run(tmp_path)
    _stage(run, "tokenizer", "tokenizer", "2026-12-01T00:01:00Z", {
        "vocab_size": 512, "bytes_per_token": 3.25, "encode_tokens_per_s": 12345.0,
        "compare_bpe_bytes_per_token": 3.5, "compare_word_bytes_per_token": 4.9})  # fmt: skip
    pre = _stage(run, "pretrain", "pretrain", "2026-12-01T00:02:00Z", {"params": 1_000_000, "val_loss": 4.4})
    (pre / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5 - s / 10, "lr": 1e-3}) + "\n"
                                               for s in range(5)))  # fmt: skip
    ev = _stage(run, "eval", "eval", "2026-12-01T00:03:00Z", {
        "val_loss": 4.5, "val_bpb": 1.9, "bias_gender_mean_gap": 0.1468, "memo_train_exact": 0.0123})  # fmt: skip
    probes = {"title": "Probes", "header": ["probe", "ckpt"],
              "rows": [["bias_gender_mean_gap", 0.1468], ["memo_train_exact", 0.0123]]}  # fmt: skip
    (ev / "report.json").write_text(json.dumps({"tables": [probes]}))
    gen = _stage(run, "generate", "generate", "2026-12-01T00:04:00Z", {"samples": 1})
    (gen / "samples.jsonl").write_text(json.dumps({"prompt": "The ", "completion": "end."}) + "\n")
    md_path, html_path = render_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    order = ["At a glance", "Data", "Tokenizer", "Training", "Evaluation", "Samples", "Model card", "Pipeline",
             "Raw metrics"]  # fmt: skip
    assert re.findall(r"^## (.+)$", md, flags=re.M) == order
    assert re.findall(r"<h2>(.+?)</h2>", page) == order
    open_part = re.sub(r"<details>.*?</details>", "", page, flags=re.S)
    assert open_part.count(">0.1468<") == 1  # the Probes table; not the eval metrics, not the model card
    assert "<td>dup_lines</td>" not in page  # drops: the funnel and its caption, no table
    assert (
        "1.234e+04" not in open_part and ">1.234e+04<" in page
    )  # a tokenizer number beside its headline: raw
    assert "compare_" not in page  # the comparison table holds them, as columns
    assert "<td>val_bpb</td>" in open_part  # language modelling: not in a table of the eval's own
    raw = page.split("<h2>Raw metrics</h2>")[1]
    assert re.findall(r"<summary>(.+?)</summary>", raw) == [
        "data (data): 2 metrics", "tokenizer (tokenizer): 3 metrics", "pretrain (pretrain): 2 metrics",
        "eval (eval): 4 metrics", "generate (generate): 1 metric"]  # fmt: skip
    assert "<details open" not in page
