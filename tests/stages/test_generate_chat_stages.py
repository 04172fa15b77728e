"""``lmforge generate`` through the engine (batched prompts, stop strings, seeds) and ``lmforge chat``'s
loop (history, system prompt, commands, context budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import from_dict
from lmforge.stages import chat as chat_stage
from lmforge.stages import generate as generate_stage

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no".split()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe
    from lmforge.training.checkpoint import build_model, save_checkpoint

    root = tmp_path_factory.mktemp("gen")
    tok = train_bpe([" ".join(WORDS) * 4, " ".join(reversed(WORDS)) * 4] * 10, vocab_size=300)
    tok_path = save_tokenizer(tok, root / "tok")
    torch.manual_seed(0)
    mcfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=96, n_layer=1, n_head=2, n_embd=32)
    return save_checkpoint(root / "m", build_model(mcfg), mcfg, tokenizer_path=tok_path)


def test_generate_writes_samples_and_seeds_reproduce(ckpt: Path, tmp_path: Path) -> None:
    base = {"model": str(ckpt), "prompts": ["the cat", "a"], "max_new_tokens": 12, "temperature": 1.0}
    a = generate_stage.main(from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "a")}))
    b = generate_stage.main(from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "b")}))
    rows = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the cat", "a"] and a["metrics"]["samples"] == 2
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
    assert b["metrics"]["tokens"] == sum(r["tokens"] for r in rows)
    stop = rows[0]["completion"][2:4]
    if stop:
        generate_stage.main(
            from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "c"), "stop": [stop]})
        )
        cut = json.loads((tmp_path / "c" / "samples.jsonl").read_text().splitlines()[0])
        assert cut["completion"] == rows[0]["completion"][: rows[0]["completion"].find(stop)]


def test_chat_loop_keeps_history_system_prompt_and_budget(ckpt: Path) -> None:
    from lmforge.inference.engine import Engine
    from lmforge.tokenizer.train import load_tokenizer
    from lmforge.training.checkpoint import load_model

    model, _ = load_model(ckpt)
    engine = Engine(model, load_tokenizer(ckpt / "tokenizer.json"))
    seen: list[list[int]] = []
    real_stream = engine.stream
    engine.stream = lambda prompts, params: (seen.append(list(prompts[0])), real_stream(prompts, params))[1]
    cfg = from_dict(chat_stage.Config, {"model": str(ckpt), "system": "be brief", "max_new_tokens": 8})
    out: list[str] = []
    lines = ["hi", "the cat sat", "/reset", "", "sun moon " * 20, "/quit", "never read"]
    turns = chat_stage.chat_loop(engine, cfg, lines, out.append)
    assert turns == 3 and "(history cleared)\n" in out
    tok = engine.tokenizer
    text = [tok.decode(ids, skip_special_tokens=False) for ids in seen]
    assert text[0].startswith("<|bos|><|system|>be brief<|end|><|user|>hi<|end|><|assistant|>")
    assert text[1].count("<|user|>") == 2 and text[1].endswith("<|user|>the cat sat<|end|><|assistant|>")
    assert text[2].count("<|user|>") == 1  # after /reset
    assert all(len(ids) <= 96 - 8 for ids in seen)


def test_generate_with_int8_weights(ckpt: Path, tmp_path: Path) -> None:
    """``weights: int8`` is a cached option of its own and decodes (int8 accuracy: tests/inference)."""
    base = {"model": str(ckpt), "prompts": ["the cat"], "max_new_tokens": 8, "temperature": 0.0}
    exact = generate_stage.main(from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "e")}))
    int8 = generate_stage.main(
        from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "q"), "weights": "int8"})
    )
    assert exact["cache_key"] != int8["cache_key"] and int8["metrics"]["samples"] == 1
    assert int8["config"]["weights"] == "int8"
    row = json.loads((tmp_path / "q" / "samples.jsonl").read_text())
    assert row["tokens"] >= 1


def test_generate_with_ngram_drafts_gives_the_same_greedy_text(ckpt: Path, tmp_path: Path) -> None:
    """``draft: ngram`` decodes speculatively: same greedy samples, acceptance in the manifest."""
    base = {
        "model": str(ckpt),
        "prompts": ["the cat sat the cat", "a"],
        "max_new_tokens": 24,
        "temperature": 0.0,
    }
    plain = generate_stage.main(from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "p")}))
    spec = generate_stage.main(
        from_dict(
            generate_stage.Config, {**base, "out": str(tmp_path / "s"), "draft": "ngram", "draft_tokens": 3}
        )
    )
    assert (tmp_path / "p" / "samples.jsonl").read_text() == (tmp_path / "s" / "samples.jsonl").read_text()
    assert spec["metrics"]["tokens"] == plain["metrics"]["tokens"]
    assert 0 <= spec["metrics"]["draft_acceptance"] <= 1 and spec["metrics"]["tokens_per_pass"] >= 1
    with pytest.raises(Exception, match="draft_tokens"):
        from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "x"), "draft_tokens": 0}).validate()
