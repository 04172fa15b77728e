"""Each fine-tuning method runs from the command line on tiny generated data (a few steps each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import ConfigError


def run_cli(*args: str) -> None:
    assert main(["finetune", *args, "-q", "--device", "cpu", "--threads", "1"]) == 0


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_finetune_help_lists_methods(capsys):
    assert main(["finetune", "--help"]) == 0
    text = capsys.readouterr().out
    for method in ("sft", "lora", "classify", "multitask", "dapt", "contrastive"):
        assert method in text
    assert main(["finetune", "clasify"]) == 2
    assert "did you mean 'classify'" in capsys.readouterr().err.lower()


def test_classify_cli(ft_dir, tmp_path):
    out = tmp_path / "classify"
    run_cli(
        "classify",
        "--model", str(ft_dir / "decoder"),
        "--train", str(ft_dir / "sent_train.txt"),
        "--dev", str(ft_dir / "sent_dev.txt"),
        "--out", str(out),
        "--max_steps", "4",
        "--eval_every", "2",
        "--bow_baseline", "false",  # tested in tests/eval and by `lmforge run` (scikit-learn is slow to import)
    )  # fmt: skip
    m = manifest(out)
    assert m["stage"] == "finetune.classify"
    for key in ("accuracy", "macro_f1", "precision_0", "recall_1", "val_loss"):
        assert key in m["metrics"]
    final = json.loads((out / "ckpt" / "final.json").read_text())
    best = out / "ckpt" / final["best"]
    assert (best / "DONE").is_file() and (best / "heads.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    assert any(t["title"].startswith("confusion") for t in report["tables"])


def test_classify_preprocess_reaches_the_bag_of_words_baseline(ft_dir, tmp_path, capsys):
    """The label is carried by a stop word alone ("very" vs "never", both in scikit-learn's list): the
    raw bag of words learns it; with stop words removed, each dev pair becomes one identical text, so
    the baseline predicts the same label for both and scores exactly 0.5."""
    import random
    from typing import get_args, get_type_hints

    from lmforge.eval.classic_text import PREPROCESS
    from lmforge.stages.finetune.classify import Config

    rng = random.Random(0)
    content = "cat dog film plot song road tree lamp rain door".split()

    def pairs(n: int) -> str:
        lines = []
        for _ in range(n):
            words = " ".join(rng.sample(content, 3))
            lines += [f"pos very {words}\n", f"neg never {words}\n"]
        return "".join(lines)

    (tmp_path / "train.txt").write_text(pairs(30))
    (tmp_path / "dev.txt").write_text(pairs(10))
    got = {}
    for mode in ("none", "stopwords"):
        out = tmp_path / mode
        run_cli(
            "classify",
            "--model", str(ft_dir / "decoder"),
            "--train", str(tmp_path / "train.txt"),
            "--dev", str(tmp_path / "dev.txt"),
            "--out", str(out),
            "--max_steps", "1",
            "--preprocess", mode,
        )  # fmt: skip
        m = manifest(out)
        assert m["config"]["preprocess"] == mode
        report = json.loads((out / "classification.json").read_text())
        assert report["bow"]["preprocess"] == mode
        rows = json.loads((out / "report.json").read_text())["tables"][0]["rows"]
        assert rows[1][0].startswith("bag-of-words") and ("stop words removed" in rows[1][0]) == (
            mode != "none"
        )
        got[mode] = m["metrics"]["bow_accuracy"]
    assert got == {"none": 1.0, "stopwords": 0.5}

    assert main(["finetune", "classify", "--train", "t.txt", "--out", "x", "--preprocess", "stems"]) == 2
    err = capsys.readouterr().err
    assert "preprocess" in err and all(mode in err for mode in PREPROCESS)
    assert get_args(get_type_hints(Config)["preprocess"]) == PREPROCESS  # no drift from the library
    with pytest.raises(ConfigError, match="bow_baseline is false"):
        Config(train="t.txt", preprocess="lemmas", bow_baseline=False).validate()


def test_sft_cli_writes_a_loadable_lm_checkpoint(ft_dir, tmp_path):
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    out = tmp_path / "sft"
    run_cli(
        "sft",
        "--model", str(ft_dir / "decoder"),
        "--train", str(ft_dir / "chat.jsonl"),
        "--out", str(out),
        "--max_steps", "3",
        "--batch_size", "4",
    )  # fmt: skip
    m = manifest(out)["metrics"]
    assert m["steps"] == 3 and m["val_loss"] > 0 and m["base_val_loss"] > 0
    assert m["skipped_records"] == 1  # the "not json" line of chat.jsonl
    model, mcfg = load_model(resolve_checkpoint(out))
    assert mcfg.arch == "decoder"


def test_time_budget_ends_a_stage_with_its_checkpoints(ft_dir, tmp_path, capsys):
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    out = tmp_path / "budget"
    run_cli(
        "classify",
        "--model", str(ft_dir / "decoder"),
        "--train", str(ft_dir / "sent_train.txt"),
        "--dev", str(ft_dir / "sent_dev.txt"),
        "--out", str(out),
        "--max_steps", "5000",
        "--max_time_s", "0.000001",  # every step takes longer: the budget ends step 1
        "--bow_baseline", "false",
    )  # fmt: skip
    m = manifest(out)
    assert 1 <= m["metrics"]["steps"] < 5000 and m["config"]["max_time_s"] == 1e-6
    assert m["metrics"]["early_stopped"] == 0 and 0 <= m["metrics"]["accuracy"] <= 1
    final = json.loads((out / "ckpt" / "final.json").read_text())
    assert final["stop_reason"] == "time_budget" and final["step"] == m["metrics"]["steps"]
    model, mcfg = load_model(resolve_checkpoint(out))
    assert mcfg.arch == "decoder" and (resolve_checkpoint(out) / "heads.safetensors").is_file()
    assert (
        main(["finetune", "sft", "--train", "x.jsonl", "--out", str(tmp_path / "x"), "--max_time_s", "-1"])
        == 2
    )
    assert "max_time_s" in capsys.readouterr().err


def test_lora_cli_saves_peft_adapter_and_merged_checkpoint(ft_dir, tmp_path):
    pytest.importorskip("lmforge.model.lora", reason="the LoRA library (lmforge.model.lora) is not there yet")
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    out = tmp_path / "lora"
    run_cli(
        "lora",
        "--model", str(ft_dir / "decoder"),
        "--train", str(ft_dir / "chat.jsonl"),
        "--out", str(out),
        "--max_steps", "3",
        "--batch_size", "4",
        "--r", "4",
    )  # fmt: skip
    best = resolve_checkpoint(out)
    assert (best / "adapter" / "adapter_config.json").is_file()
    assert (best / "adapter" / "adapter_model.safetensors").is_file()
    load_model(best)
    assert manifest(out)["metrics"]["trainable_params"] > 0


def test_help_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, io, contextlib; from lmforge.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['finetune', 'classify', '--help'])\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_classify_encoder_trunk(ft_dir, tmp_path):
    out = tmp_path / "classify-enc"
    run_cli(
        "classify",
        "--model", str(ft_dir / "encoder"),
        "--train", str(ft_dir / "topic.jsonl"),
        "--out", str(out),
        "--max_steps", "2",
        "--pooling", "mean",
        "--bow_baseline", "false",
    )  # fmt: skip
    m = manifest(out)["metrics"]
    assert "accuracy" in m and "bow_accuracy" not in m
    assert m["dev_examples"] > 0


def test_multitask_cli(ft_dir, tmp_path):
    recipe = tmp_path / "mt.yaml"
    recipe.write_text(
        "stages:\n  mt:\n    stage: finetune.multitask\n    tasks:\n"
        f"      sentiment: {{train: {ft_dir / 'sent_train.txt'}, dev: {ft_dir / 'sent_dev.txt'}}}\n"
        f"      topic: {{train: {ft_dir / 'topic.jsonl'}, weight: 0.5}}\n"
    )
    out = tmp_path / "mt"
    run_cli(
        "multitask", str(recipe), "--model", str(ft_dir / "decoder"), "--out", str(out), "--max_steps", "3",
        "--bow_baseline", "false",
    )  # fmt: skip
    m = manifest(out)["metrics"]
    assert {"sentiment_accuracy", "topic_accuracy", "mean_accuracy"} <= set(m)
    meta = json.loads(
        (
            out / "ckpt" / json.loads((out / "ckpt" / "final.json").read_text())["best"] / "finetune.json"
        ).read_text()
    )
    assert meta["labels"] == {"sentiment": ["0", "1"], "topic": ["food", "sport"]}


def test_dapt_cli_reports_domain_and_general_perplexity(ft_dir, tmp_path):
    out = tmp_path / "dapt"
    run_cli(
        "dapt",
        "--model", str(ft_dir / "decoder"),
        "--domain", str(ft_dir / "domain.txt"),
        "--general", str(ft_dir / "general.txt"),
        "--replay", "0.25",
        "--val_fraction", "0.3",
        "--out", str(out),
        "--max_steps", "3",
        "--batch_size", "4",
    )  # fmt: skip
    m = manifest(out)["metrics"]
    for key in (
        "domain_ppl_before",
        "domain_ppl_after",
        "general_ppl_before",
        "general_ppl_after",
        "forgetting",
    ):
        assert key in m


def test_contrastive_cli_and_embed(ft_dir, tmp_path):
    from lmforge.training.contrastive import embed, load_embedder

    out = tmp_path / "contrastive"
    run_cli(
        "contrastive",
        "--model", str(ft_dir / "decoder"),
        "--train", str(ft_dir / "pairs.jsonl"),
        "--out", str(out),
        "--max_steps", "3",
        "--batch_size", "8",
        "--val_fraction", "0.3",
    )  # fmt: skip
    m = manifest(out)["metrics"]
    for who in ("", "bm25_"):  # the fine-tuned model, the untouched base (…_before) and BM25
        assert 0 <= m[f"{who}recall_at_1"] <= m[f"{who}recall_at_5"] <= m[f"{who}recall_at_10"] <= 1
    assert 0 <= m["recall_at_1_before"] <= m["recall_at_10_before"] <= 1
    table = json.loads((out / "report.json").read_text())["tables"][0]
    assert table["header"] == ["metric", "base model", "fine-tuned", "BM25"]
    assert [row[0] for row in table["rows"]] == ["recall_at_1", "recall_at_5", "recall_at_10", "mrr"]
    assert 0 < m["mrr"] <= 1 and 0 < m["bm25_mrr"] <= 1
    model, tok, pooling = load_embedder(out)
    vectors = embed(model, tok, ["a good story", "bread"], pooling=pooling)
    assert vectors.shape == (2, 32)
    assert abs(float(vectors.norm(dim=-1)[0]) - 1.0) < 1e-5


def test_recipe_section_is_found_by_stage_kind(tmp_path, capsys):
    from lmforge.stages.invoke import config_from_args
    from lmforge.stages.run import stage_module

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "stages:\n  dapt: {stage: finetune.dapt, domain: [a.txt], replay: 0.0}\n"
        "  dapt-replay: {stage: finetune.dapt, domain: [a.txt], replay: 0.5}\n"
        "  mine: {stage: finetune.sft, train: [x.jsonl]}\n"
    )
    dapt = config_from_args(
        "finetune dapt", stage_module("finetune.dapt", "test"), [str(recipe)], "finetune.dapt"
    )
    sft = config_from_args(
        "finetune sft", stage_module("finetune.sft", "test"), [str(recipe)], "finetune.sft"
    )
    assert dapt.replay == 0.0 and sft.train == ["x.jsonl"]
    recipe.write_text("stages:\n  a: {stage: finetune.sft}\n  b: {stage: finetune.sft}\n")
    assert main(["finetune", "sft", str(recipe)]) == 2
    assert "several sections" in capsys.readouterr().err


def test_contrastive_pools_as_the_bases_pooling_json_declares(ft_dir, tmp_path):
    import shutil

    base = tmp_path / "st-base"
    shutil.copytree(ft_dir / "encoder", base)
    (base / "pooling.json").write_text(json.dumps({"mode": "cls", "normalize": True, "source": "test"}))
    out = tmp_path / "contrastive-st"
    run_cli(
        "contrastive",
        "--model", str(base),
        "--train", str(ft_dir / "pairs.jsonl"),
        "--out", str(out),
        "--max_steps", "2",
        "--batch_size", "8",
        "--max_len", "12",
    )  # fmt: skip
    best = out / "ckpt" / json.loads((out / "ckpt" / "final.json").read_text())["best"]
    assert json.loads((best / "finetune.json").read_text())["pooling"] == "cls"


def test_contrastive_on_squad_pairs_holds_out_whole_articles(ft_dir, tmp_path):
    from tests.eval.test_bm25 import squad_zip

    out = tmp_path / "contrastive-squad"
    run_cli(
        "contrastive",
        "--model", str(ft_dir / "encoder"),
        "--train", f"task:squad@{squad_zip(tmp_path / 'data')}",
        "--out", str(out),
        "--max_steps", "2",
        "--batch_size", "6",
    )  # fmt: skip
    m = manifest(out)
    metrics = m["metrics"]  # the training split's 36 pairs: trained on, or choosing the best step
    assert (
        metrics["train_pairs"] + metrics["select_pairs"],
        metrics["val_queries"],
        metrics["val_candidates"],
    ) == (
        36,
        12,
        4,
    )
    assert metrics["select_pairs"] > 0
    assert m["metrics"]["bm25_recall_at_1"] == 1.0  # each question names its paragraph's unique topic word
    assert main(["finetune", "contrastive", "--model", str(ft_dir / "encoder"), "--out", str(out),
                 "--train", "task:hellaswag@x"]) == 2  # fmt: skip


def test_max_len_longer_than_the_model_is_refused(ft_dir, tmp_path, capsys):
    args = ["--model", str(ft_dir / "encoder"), "--max_len", "65", "--max_steps", "1", "-q"]
    assert main(["finetune", "classify", "--train", str(ft_dir / "sent_train.txt"), "--out",
                 str(tmp_path / "c"), *args]) == 2  # fmt: skip
    assert "max_len" in capsys.readouterr().err
    assert main(["finetune", "contrastive", "--train", str(ft_dir / "pairs.jsonl"), "--out",
                 str(tmp_path / "p"), *args]) == 2  # fmt: skip
    assert "block_size 64" in capsys.readouterr().err
    assert main(["finetune", "classify", "--train", "x", "--out", str(tmp_path / "c"), "--max_len", "2"]) == 2
    assert "max_len" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["classify", "multitask", "ner", "contrastive"])
def test_max_len_cuts_batches_that_stay_padded_to_their_longest_row(method, ft_dir, tmp_path, monkeypatch):
    from lmforge.tokenizer import texts

    shapes = []

    def spy(seqs, pad_id):  # the real pad_batch, its batches recorded
        idx, mask = real(seqs, pad_id)
        shapes.append((idx.shape[1], int(mask.sum(dim=1).max())))
        return idx, mask

    real = texts.pad_batch
    monkeypatch.setattr(texts, "pad_batch", spy)
    conll = tmp_path / "ner.conll"
    conll.write_text("".join(" ".join(["good"] * 12).replace(" ", "\tO\n") + "\tB-x\n\n" for _ in range(12)))
    data = {
        "classify": ["--train", str(ft_dir / "sent_train.txt"), "--bow_baseline", "false"],
        "multitask": ["--tasks.sent.train", str(ft_dir / "sent_train.txt"), "--bow_baseline", "false"],
        "ner": ["--train", str(conll), "--dev", "", "--test", "", "--crf_baseline", "false"],
        "contrastive": ["--train", str(ft_dir / "pairs.jsonl"), "--batch_size", "8"],
    }[method]
    run_cli(method, "--model", str(ft_dir / "encoder"), "--out", str(tmp_path / method), "--max_steps", "2",
            "--max_len", "6", *data)  # fmt: skip
    assert shapes and all(t == longest <= 6 for t, longest in shapes)
    assert manifest(tmp_path / method)["config"]["max_len"] == 6
