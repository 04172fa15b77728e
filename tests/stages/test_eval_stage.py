"""``lmforge eval``: k-shot tasks on a checkpoint, LM metrics on a text file, checkpoints side by side,
eval.json and the report tables; a few-shot HellaSwag/ARC run on ../shared/data when it is present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import from_dict
from lmforge.errors import ConfigError
from lmforge.stages import eval as eval_stage

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
WORDS = "the cat sat on a mat and dog ran to park sun moon yes no".split()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("ckpts")
    tok = train_bpe([" ".join(WORDS) * 4, " ".join(reversed(WORDS)) * 4] * 10, vocab_size=300)
    tok_path = save_tokenizer(tok, root / "tok")
    for seed in (0, 1):
        torch.manual_seed(seed)
        mcfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=128, n_layer=1, n_head=2, n_embd=32)
        save_checkpoint(root / f"m{seed}", build_model(mcfg), mcfg, tokenizer_path=tok_path)
    rows = [{"q": f"Is {w} a word?", "choices": ["yes", "no"], "answer": i % 2} for i, w in enumerate(WORDS)]
    (root / "yn.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "yn.yaml").write_text(
        "path: yn.jsonl\ntemplate: '{q}\\nAnswer:'\ninstruction: Answer yes or no.\n"
    )
    (root / "text.txt").write_text("the cat sat on the mat\n\nthe dog ran to the park\n")
    (root / "tokens").mkdir()  # a token directory with one .bin shard
    import numpy as np

    ids = np.array([0] + tok.encode("the cat sat on the mat").ids * 3, dtype=np.uint16)  # 7 tokens
    ids.tofile(root / "tokens" / "shard_00000.bin")
    (root / "tokens" / "index.json").write_text(json.dumps({"dtype": "uint16", "shards": []}))
    return root


def test_tasks_text_and_comparison_land_in_eval_json_and_report_tables(ckpts: Path, tmp_path: Path) -> None:
    cfg = from_dict(
        eval_stage.Config,
        {
            "model": str(ckpts / "m0"),
            "compare": [str(ckpts / "m1")],
            "tokenizer": "",
            "out": str(tmp_path / "eval"),
            "tasks": [str(ckpts / "yn.yaml")],
            "shots": [0, 2],
            "text": [str(ckpts / "text.txt"), str(ckpts / "tokens" / "shard_00000.bin")],
            "probes": ["bias"],
        },
    )
    m = eval_stage.main(cfg)
    metrics = m["metrics"]
    assert 0 <= metrics["yn_2shot_acc"] <= 1 and "yn_0shot_acc_norm" in metrics
    assert metrics["text_loss"] > 0 and metrics["shard_00000_tokens"] == 3 * 7  # every target of the shard
    assert "bias_gender_mean_gap" in metrics
    data = json.loads((tmp_path / "eval" / "eval.json").read_text())["checkpoints"]
    assert list(data) == ["m0", "m1"]
    assert data["m0"]["examples"]["yn_2shot"].startswith("Answer yes or no.\n\n")
    tables = {t["title"]: t for t in json.loads((tmp_path / "eval" / "report.json").read_text())["tables"]}
    assert tables["Tasks"]["header"] == ["task", "shots", "metric", "m0", "m1"]
    assert {"Probes", "Language modelling", "Largest bias-probe gap"} <= set(tables)
    assert eval_stage.main(cfg)["cached_last"]


def test_bad_options_fail_before_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        from_dict(eval_stage.Config, {"tasks": ["helaswag"]})
    with pytest.raises(ConfigError, match="data_dir"):
        from_dict(eval_stage.Config, {"tasks": ["hellaswag"]})
    with pytest.raises(ConfigError, match="shots"):
        from_dict(eval_stage.Config, {"shots": [-1]})


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)")
def test_few_shot_hellaswag_arc_sst2_squad_on_a_checkpoint(ckpts: Path, tmp_path: Path) -> None:
    cfg = from_dict(
        eval_stage.Config,
        {
            "model": str(ckpts / "m0"),
            "tokenizer": "",
            "out": str(tmp_path / "eval"),
            "tasks": ["hellaswag", "arc_easy", "sst2", "squad"],
            "shots": [2],
            "limit": 6,
            "data_dir": str(SHARED),
        },
    )
    metrics = eval_stage.main(cfg)["metrics"]
    for name in (
        "hellaswag_2shot_acc",
        "hellaswag_2shot_acc_norm",
        "arc_easy_2shot_acc",
        "sst2_2shot_accuracy",
        "sst2_2shot_macro_f1",
        "squad_2shot_exact_match",
        "squad_2shot_f1",
    ):
        assert 0 <= metrics[name] <= 1, name
    tables = json.loads((tmp_path / "eval" / "report.json").read_text())["tables"]
    assert any(t["title"].startswith("sst2 2-shot: confusion matrix") for t in tables)


def test_eval_tables_land_in_the_run_report(ckpts: Path, tmp_path: Path) -> None:
    from lmforge.report.render import render_report

    run = tmp_path / "run"
    cfg = {
        "model": str(ckpts / "m0"),
        "tokenizer": "",
        "out": str(run / "eval"),
        "tasks": [str(ckpts / "yn.yaml")],
    }
    eval_stage.main(from_dict(eval_stage.Config, {**cfg, "shots": [1], "probes": ["bias"]}))
    md_path, html_path = render_report(run)
    md, html = md_path.read_text(), html_path.read_text()
    assert "**Tasks**" in md and "| yn | 1shot | acc |" in md and "**Probes**" in md
    assert "<strong>Tasks</strong>" in html and "Largest bias-probe gap" in html


def test_baselines_are_columns_beside_the_model_and_land_in_the_manifest(ckpts: Path, tmp_path: Path) -> None:
    rows = [{"q": f"Is {w} green?", "choices": ["yes", "no"], "answer": 1} for w in WORDS[:5]]
    (ckpts / "yn_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))  # "no" is the majority
    (ckpts / "yn2.yaml").write_text(
        "path: yn.jsonl\nfewshot_path: yn_train.jsonl\ntemplate: '{q}\\nAnswer:'\n"
    )
    cfg = from_dict(
        eval_stage.Config,
        {
            "model": str(ckpts / "m0"),
            "tokenizer": "",
            "out": str(tmp_path / "eval"),
            "tasks": [str(ckpts / "yn2.yaml")],
            "shots": [0, 1],
            "baselines": ["majority"],
        },
    )
    metrics = eval_stage.main(cfg)["metrics"]
    golds = [i % 2 for i in range(len(WORDS))]  # yn.jsonl: answer i % 2, and 1 is "no"
    assert metrics["baseline_majority_yn2_acc"] == pytest.approx(sum(golds) / len(golds))
    assert "yn2_0shot_acc" in metrics
    tables = {t["title"]: t for t in json.loads((tmp_path / "eval" / "report.json").read_text())["tables"]}
    header = tables["Tasks"]["header"]
    assert header == ["task", "shots", "metric", "m0", "baseline:majority"]
    acc_rows = [r for r in tables["Tasks"]["rows"] if r[2] == "acc"]
    assert [r[1] for r in acc_rows] == ["0shot", "1shot"]
    assert all(r[4] == f"{sum(golds) / len(golds):.4g}" for r in acc_rows)
    norm = next(r for r in tables["Tasks"]["rows"] if r[2] == "acc_norm")
    assert norm[4] == "–"  # the baseline has no length-normalised score


def test_a_baseline_that_answers_none_of_the_tasks_is_refused(ckpts: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown baseline"):
        from_dict(eval_stage.Config, {"tasks": [str(ckpts / "yn.yaml")], "baselines": ["nope"]})
    with pytest.raises(ConfigError, match="name the tasks"):
        from_dict(eval_stage.Config, {"baselines": ["majority"]})
    cfg = from_dict(
        eval_stage.Config,
        {
            "model": str(ckpts / "m0"),
            "tokenizer": "",
            "out": str(tmp_path / "eval"),
            "tasks": [str(ckpts / "yn.yaml")],  # no training split: majority has nothing to fit on
            "baselines": ["majority"],
        },
    )
    with pytest.raises(ConfigError, match="none of .*'yn'.* qualifies"):
        eval_stage.main(cfg)
