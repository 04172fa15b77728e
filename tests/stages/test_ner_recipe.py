"""recipes/ner.yaml plans in order and runs end to end (data → tokenizer → MLM pretrain → finetune.ner →
report) on tiny files written here, with steps and sizes overridden so it takes seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmforge.config import load_yaml
from lmforge.stages.run import plan

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "ner.yaml"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


def test_recipe_plans(tmp_path: Path) -> None:
    steps = plan(load_yaml(RECIPE), {}, tmp_path)
    assert [s.instance for s in steps] == ["data", "tokenizer", "pretrain", "ner", "report"]
    by = {s.instance: s for s in steps}
    assert by["pretrain"].config.objective == "mlm" and by["ner"].kind == "finetune.ner"
    assert by["ner"].config.model == "@pretrain" and by["ner"].config.crf_baseline


@pytest.mark.slow
def test_recipe_runs_on_tiny_data(tmp_path: Path) -> None:
    from test_ner import toy_sentences, write_conll

    from lmforge.cli import main

    rng = random.Random(0)
    words = "alice bob carol went to paris rome with the team today and saw new york".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(14)) + " ." for _ in range(400)))
    files = {
        s: write_conll(tmp_path / f"{s}.conll", toy_sentences(n, i))
        for i, (s, n) in enumerate((("train", 60), ("dev", 20), ("test", 20)))
    }
    overrides = [
        f"data.input=[{corpus}]",
        "data.workers=1",
        "tokenizer.vocab_size=300",
        "tokenizer.workers=1",
        "pretrain.model.n_layer=1",
        "pretrain.model.n_head=2",
        "pretrain.model.n_embd=32",
        "pretrain.model.block_size=32",
        "pretrain.max_steps=4",
        "pretrain.warmup_steps=1",
        "pretrain.eval_every=4",
        "pretrain.ckpt_every=4",
        "pretrain.eval_tokens=1024",
        "pretrain.threads=1",
        "ner.max_steps=6",
        "ner.eval_every=3",
        "ner.threads=1",
        "ner.crf_baseline=false",
        *(f"ner.{s}={p}" for s, p in files.items()),
    ]
    out = tmp_path / "run"
    assert main(["run", str(RECIPE), "--out", str(out), "-q", *overrides]) == 0
    m = json.loads((out / "ner" / "manifest.json").read_text())["metrics"]
    assert m["test_sentences"] == 20 and m["steps"] == 6
    assert {"test_f1", "baseline_lookup_test_f1"} <= set(m)
    report = (out / "report.md").read_text()
    assert "test entity scores" in report and "most-frequent tag" in report
