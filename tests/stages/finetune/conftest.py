"""Fixtures for the fine-tuning stage tests: a tiny tokenizer, tiny decoder and encoder checkpoints
(untrained: the stages only need real checkpoint directories), and tiny generated data files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

POSITIVE = "good great lovely happy fine superb".split()
NEGATIVE = "bad awful sad poor ugly dull".split()
FILLER = "the movie film was is a an and story plot very quite really".split()
TOPICS = {"sport": "ball goal team match".split(), "food": "bread soup cake rice".split()}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


def sentence(rng: random.Random, words: list[str]) -> str:
    parts = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))] + [rng.choice(words)]
    rng.shuffle(parts)
    return " ".join(parts)


def sentiment(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = str(i % 2)
        out.append((label, sentence(rng, POSITIVE if label == "1" else NEGATIVE)))
    return out


@pytest.fixture(scope="session")
def ft_dir(tmp_path_factory) -> Path:
    """A directory with ``tokenizer.json``, ``decoder/`` and ``encoder/`` checkpoints and data files."""
    import torch

    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # pay torch.optim's one-time start-up here
    root = tmp_path_factory.mktemp("finetune")
    rng = random.Random(0)
    words = POSITIVE + NEGATIVE + FILLER + [w for ws in TOPICS.values() for w in ws]
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    tok = train_bpe(corpus, vocab_size=320)
    tok_path = save_tokenizer(tok, root)
    for arch in ("decoder", "encoder"):
        mcfg = ModelConfig(
            arch=arch, vocab_size=tok.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=32
        )
        save_checkpoint(root / arch, build_model(mcfg), mcfg, tokenizer_path=tok_path)
    (root / "sent_train.txt").write_text("".join(f"{lab} {text}\n" for lab, text in sentiment(120, 1)))
    (root / "sent_dev.txt").write_text("".join(f"{lab} {text}\n" for lab, text in sentiment(40, 2)))
    topics = []
    for i in range(80):
        name = list(TOPICS)[i % 2]
        topics.append({"text": sentence(rng, TOPICS[name]), "label": name})
    (root / "topic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in topics))
    chats = []
    for _ in range(40):
        word = rng.choice(POSITIVE)
        chats.append({"prompt": f"say {word}", "response": f"{word} {word}"})
    chats.append({"instruction": "repeat", "input": "good", "output": "good"})
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats) + "not json\n")
    pairs = [{"query": f"the {w} one", "positive": f"a {w} story"} for w in words]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (root / "domain.txt").write_text("\n".join(sentence(rng, TOPICS["food"]) for _ in range(200)))
    (root / "general.txt").write_text("\n".join(sentence(rng, POSITIVE + NEGATIVE) for _ in range(200)))
    return root
