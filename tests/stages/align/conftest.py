"""Fixtures for the alignment stage tests: a tiny tokenizer, an untrained decoder checkpoint and reward model, and tiny
generated preference and arithmetic files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

GOOD = "good great fine nice".split()
BAD = "bad awful poor ugly".split()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.fixture(scope="session")
def align_dir(tmp_path_factory) -> Path:
    """``decoder/`` (checkpoint with tokenizer), ``prefs.jsonl`` (good over bad replies), ``math.jsonl``."""
    import torch

    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # pay torch.optim's one-time start-up here
    root = tmp_path_factory.mktemp("align")
    rng = random.Random(0)
    words = GOOD + BAD + "say the a is + = ####".split() + list("0123456789")
    tok = train_bpe([" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)], vocab_size=300)
    tok_path = save_tokenizer(tok, root)
    mcfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=48, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    save_checkpoint(root / "decoder", build_model(mcfg), mcfg, tokenizer_path=tok_path)
    prefs = [
        {"prompt": f"say {rng.choice(GOOD + BAD)}", "chosen": f"{rng.choice(GOOD)} {rng.choice(GOOD)}",
         "rejected": f"{rng.choice(BAD)} {rng.choice(BAD)}"}
        for _ in range(60)
    ]  # fmt: skip
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs) + "not json\n")
    problems = [{"question": f"{a}+{b}=", "answer": f"#### {a + b}"} for a in range(4) for b in range(4)]
    (root / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems))
    return root


@pytest.fixture(scope="session")
def reward_dir(align_dir: Path, tmp_path_factory) -> Path:
    """An untrained reward model (the tiny decoder's trunk + a fresh head) saved as a checkpoint."""
    import torch

    from lmforge.model.checkpoint import load_model
    from lmforge.training.reward_model import RewardModel, save_reward_model

    trunk, mcfg = load_model(align_dir / "decoder")
    torch.manual_seed(0)
    rm = RewardModel(trunk)
    out = tmp_path_factory.mktemp("rm")
    save_reward_model(out, rm, mcfg, tokenizer_path=align_dir / "tokenizer.json", base="test")
    return out
