"""``finetune.qa`` end to end inside ``lmforge run`` on a tiny encoder and SQuAD-shaped articles written
here: it learns a toy task, writes metrics, predictions (exact context slices) and a span-head
checkpoint, caches; a decoder base is refused before anything is written; the shared SQuAD split."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import ConfigError

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
NAMES = "alice bob carol dave erin frank gina hank ivan judy".split()
CITIES = "paris rome oslo lima cairo tokyo delhi quito".split()
FILLER = "the weather there is mild and the food is good most of the year".split()


def paragraph(rng: random.Random) -> dict:
    """A context naming one city (after filler long enough to need two windows) and a question whose
    answer is that city."""
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    before = " ".join(rng.choice(FILLER) for _ in range(rng.randint(4, 20)))
    after = " ".join(rng.choice(FILLER) for _ in range(rng.randint(4, 12)))
    context = f"{before} . {name.title()} lives in {city.title()} . {after} ."
    start = context.index(city.title())
    qas = [
        {
            "id": f"q{rng.randrange(10**9)}",
            "question": f"Where does {name.title()} live?",
            "answers": [{"text": city.title(), "answer_start": start}, {"text": f"in {city.title()}"}],
        }
    ]
    return {"context": context, "qas": qas}


def squad_zip(data_dir: Path, n_articles: int, per_article: int, seed: int = 0) -> Path:
    """``data_dir/squad-v1.1/dev-v1.1.json.zip`` as SQuAD v1.1 ships it (json in a zip)."""
    rng = random.Random(seed)
    data = [
        {"title": f"Article_{a}", "paragraphs": [paragraph(rng) for _ in range(per_article)]}
        for a in range(n_articles)
    ]
    path = data_dir / "squad-v1.1" / "dev-v1.1.json.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("dev-v1.1.json", json.dumps({"version": "1.1", "data": data}))
    return path


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    """Untrained 1-layer ``encoder/`` and ``decoder/`` checkpoints with a WordPiece tokenizer, and
    ``data/``: 8 articles (6 train, 2 test) of 12 one-question paragraphs."""
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import TokenizerSpec, save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("qa")
    squad_zip(root / "data", n_articles=8, per_article=12)
    words = (
        NAMES + CITIES + FILLER + [w.title() for w in NAMES + CITIES] + "where does live lives in ? .".split()
    )
    rng = random.Random(1)
    tok = train_tokenizer(
        [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)], TokenizerSpec("wordpiece", 200)
    )
    tok_path = save_tokenizer(tok, root)
    for arch in ("encoder", "decoder"):
        mcfg = ModelConfig(
            arch=arch, vocab_size=tok.get_vocab_size(), block_size=48, n_layer=1, n_head=2, n_embd=32
        )
        save_checkpoint(root / arch, build_model(mcfg), mcfg, tokenizer_path=tok_path)
    return root


def test_finetune_qa_runs_in_a_recipe_learns_and_writes_predictions(qa_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "qa.yaml"
    recipe.write_text(
        f"""
name: qa-test
stages:
  qa: {{stage: finetune.qa, model: {qa_dir / "encoder"}, data_dir: {qa_dir / "data"}, max_len: 32,
        doc_stride: 8, max_answer_tokens: 4, max_steps: 60, batch_size: 16, lr: 3.0e-3, warmup_steps: 5,
        eval_every: 30, val_fraction: 0.2, device: cpu, threads: 1}}
"""
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    manifest = json.loads((out / "qa" / "manifest.json").read_text())
    assert manifest["stage"] == "finetune.qa" and manifest["status"] == "complete"
    m = manifest["metrics"]
    assert (m["train_questions"], m["dev_questions"], m["test_questions"]) == (60, 12, 24)
    assert m["train_windows"] > m["train_questions"] > m["train_windows_without_answer"] > 0
    assert m["test_windows"] > m["test_questions"] and m["mismatched_answers"] == 0
    # an untrained head picks arbitrary spans; after 60 steps the city is found
    assert m["dev_f1"] > m["dev_f1_before"] and m["test_exact_match"] >= 0.8
    assert 0 <= m["test_exact_match"] <= m["test_f1"] <= 1
    lines = [json.loads(x) for x in (out / "qa" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 24
    from lmforge.eval.loaders_qa import squad_articles

    contexts = {
        q["id"]: p["context"]
        for a in squad_articles(qa_dir / "data" / "squad-v1.1" / "dev-v1.1.json.zip", "test")
        for p in a["paragraphs"]
        for q in p["qas"]
    }
    assert set(contexts) == {r["id"] for r in lines}
    for r in lines:
        assert contexts[r["id"]][r["start"] : r["end"]] == r["prediction"]
        assert r["references"][1] == f"in {r['references'][0]}"  # every given answer scores
    em = sum(r["exact_match"] for r in lines) / len(lines)
    assert em == pytest.approx(m["test_exact_match"])
    best = json.loads((out / "qa" / "ckpt" / "final.json").read_text())["best"]
    ckpt = out / "qa" / "ckpt" / best
    assert (ckpt / "heads.safetensors").is_file() and (ckpt / "model.safetensors").is_file()
    meta = json.loads((ckpt / "finetune.json").read_text())
    assert meta["method"] == "qa" and meta["head"] == "span" and meta["max_len"] == 32
    from safetensors.torch import load_file

    assert {k: tuple(v.shape) for k, v in load_file(ckpt / "heads.safetensors").items()} == {
        "qa.proj.weight": (2, 32),
        "qa.proj.bias": (2,),
    }
    tables = json.loads((out / "qa" / "report.json").read_text())["tables"]
    assert tables[0]["rows"][0][2:] == [m["test_exact_match"], m["test_f1"]]
    # a second run is a cache hit
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    assert "qa" in json.loads((out / "run.json").read_text())["cached"]


def test_a_decoder_base_is_refused_before_any_work(qa_dir: Path, tmp_path: Path) -> None:
    from lmforge.config import from_dict
    from lmforge.stages.finetune import qa

    out = tmp_path / "qa"
    cfg = from_dict(
        qa.Config,
        {
            "model": str(qa_dir / "decoder"),
            "data_dir": str(qa_dir / "data"),
            "out": str(out),
            "max_len": 32,
            "doc_stride": 8,
        },
    )
    with pytest.raises(ConfigError, match=r"model.*needs an encoder checkpoint.*is a decoder"):
        qa.main(cfg)
    assert not out.exists() and not out.with_name("qa.partial").exists()
    # a window longer than the encoder's context is refused the same way
    cfg = from_dict(
        qa.Config, {"model": str(qa_dir / "encoder"), "out": str(out), "max_len": 64, "doc_stride": 16}
    )
    with pytest.raises(ConfigError, match="max_len.*64 tokens exceed the base model's block_size 48"):
        qa.main(cfg)
    assert not out.with_name("qa.partial").exists()


def test_window_options_are_validated() -> None:
    from lmforge.config import from_dict
    from lmforge.stages.finetune import qa

    cfg = from_dict(qa.Config, {})
    assert (cfg.max_len, cfg.doc_stride, cfg.max_answer_tokens, cfg.data_dir) == (
        256,
        128,
        30,
        "../shared/data",
    )
    with pytest.raises(ConfigError, match=r"doc_stride.*must be in \[0, 189\)"):
        from_dict(qa.Config, {"doc_stride": 200})
    with pytest.raises(ConfigError, match="max_answer_tokens"):
        from_dict(qa.Config, {"max_answer_tokens": 0})
    with pytest.raises(ConfigError, match="max_test_examples"):
        from_dict(qa.Config, {"max_test_examples": -1})


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)")
def test_the_shared_squad_split_gives_windows_whose_gold_tokens_hold_the_answers(qa_dir: Path) -> None:
    """On the real SQuAD split the stage reads: the test split is the eval task's, untouched by training
    and held-out articles; nearly every training answer lies inside some window's gold tokens."""
    from lmforge.config import from_dict
    from lmforge.eval.tasks import load_task
    from lmforge.stages.finetune import qa
    from lmforge.tokenizer.train import load_tokenizer
    from lmforge.training.qa_spans import featurize

    cfg = from_dict(qa.Config, {"data_dir": str(SHARED)})
    train, dev, test, mismatched = qa._splits(cfg, SHARED / qa.SQUAD_FILE)
    task = load_task("squad", data_dir=SHARED)
    assert [q.references for q in test] == [d.references for d in task.docs]
    assert len(train) + len(dev) + mismatched <= len(task.fewshot_pool) == 8123
    contexts = {q.example.context for q in train} | {q.example.context for q in dev}
    assert not contexts & {q.example.context for q in test}
    assert not {q.example.context for q in train} & {q.example.context for q in dev}
    tok = load_tokenizer(qa_dir / "tokenizer.json")
    sample = train[::40]
    windows = featurize(tok, [q.example for q in sample], max_len=256, doc_stride=128)
    found = {w.example for w in windows if w.start > 0}
    assert len(found) >= 0.98 * len(sample)
    for w in windows:
        if w.start > 0:
            ex = sample[w.example].example
            a, b = w.offsets[w.start - w.context_start][0], w.offsets[w.end - w.context_start][1]
            assert ex.context[ex.answer_start : ex.answer_end] in ex.context[a:b]
