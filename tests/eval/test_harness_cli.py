"""`lmforge harness` runs lm-evaluation-harness from the command line, offline, on lmforge's shipped local
task, and scores what lmforge's own evaluator scores on the same questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lmforge.cli import main  # noqa: E402
from lmforge.stages.harness import TASKS_DIR  # noqa: E402

WORDS = "the def len class import list tuple dict open print return yield None int range pass".split()


@pytest.mark.slow
def test_harness_command_matches_lmforge_eval(tmp_path: Path, monkeypatch, one_torch_thread) -> None:
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    monkeypatch.chdir(tmp_path)
    questions = (TASKS_DIR / "python_mc.jsonl").read_text()
    tok = train_bpe([questions, " ".join(WORDS) * 5] * 5, vocab_size=400)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=128, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.tok_emb.weight.mul_(30)  # confident, varied preferences: accuracy is not a coin toss
    ckpt = save_checkpoint(
        tmp_path / "ckpt", model, cfg, tokenizer_path=save_tokenizer(tok, tmp_path / "tok")
    )

    args = ["harness", "--model", str(ckpt), "--tasks", "lmforge_python_mc", "--output_path", "res"]
    assert main(args + ["--batch_size", "4"]) == 0
    (result,) = list(Path("res").rglob("results_*.json"))
    theirs = json.loads(result.read_text())["results"]["lmforge_python_mc"]

    task = str(TASKS_DIR / "python_mc.yaml")
    assert main(["eval", "--model", str(ckpt), "--tasks", f"[{task}]", "--out", "ev", "-q"]) == 0
    ours = json.loads(Path("ev/manifest.json").read_text())["metrics"]
    assert theirs["acc,none"] == pytest.approx(ours["python_mc_0shot_acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["python_mc_0shot_acc_norm"])
    assert 0 < ours["python_mc_0shot_acc"] < 1  # a real comparison, not two zeros


def test_harness_command_explains_itself(capsys) -> None:
    assert main(["harness", "--help"]) == 0
    assert "lmforge_python_mc" in capsys.readouterr().out
    assert main(["harness", "--tasks", "x"]) == 2
    assert "--model CKPT is required" in capsys.readouterr().err
