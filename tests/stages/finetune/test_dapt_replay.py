"""Replay of general data during domain-adaptive pretraining reduces forgetting (a toy domain shift).

General text cycles through six words in one order, the domain text in the reverse order: learning the
domain overwrites exactly what the general data taught, unless general rows are replayed.
"""

from __future__ import annotations

import random

from lmforge.config import from_dict
from lmforge.stages.finetune import dapt


def run(out, model, domain, general, replay, steps):
    cfg = from_dict(
        dapt.Config,
        {
            "model": str(model),
            "domain": [str(domain)],
            "general": str(general),
            "replay": replay,
            "out": str(out),
            "max_steps": steps,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 5,
            "eval_every": steps,
            "val_fraction": 0.2,
            "device": "cpu",
            "threads": 1,
            "log_every": 1000,
        },
    )
    return dapt.main(cfg)["metrics"]


def cycles(words: list[str], seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(60):
        start = rng.randrange(len(words))
        lines.append(" ".join(words[(start + i) % len(words)] for i in range(12)))
    return "\n".join(lines)


def test_replay_reduces_forgetting(ft_dir, tmp_path):
    words = "good great lovely happy fine superb".split()
    general, domain = tmp_path / "general.txt", tmp_path / "domain.txt"
    general.write_text(cycles(words, 0))
    domain.write_text(cycles(words[::-1], 1))
    # a "general" model: the untrained checkpoint trained on the general text first
    base = run(tmp_path / "base", ft_dir / "decoder", general, domain, 0.0, 80)
    assert base["domain_loss_after"] < base["domain_loss_before"]
    plain = run(tmp_path / "plain", tmp_path / "base", domain, general, 0.0, 40)
    replay = run(tmp_path / "replay", tmp_path / "base", domain, general, 0.5, 40)
    assert plain["domain_gain"] > 0 and replay["domain_gain"] > 0  # both adapt to the domain
    assert plain["forgetting"] > 0  # without replay the general loss rises
    assert replay["forgetting"] < 0.5 * plain["forgetting"]
