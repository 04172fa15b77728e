"""``lmforge generate`` through the engine (batched prompts, stop strings, seeds) and ``lmforge chat``'s
loop (history, system prompt, commands, context budget)."""

from __future__ import annotations

import io
import json
import re
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
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

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
    # the decode thread count the engine measured (1 or torch's count) is in the manifest
    assert b["metrics"]["decode_threads"] in (1, torch.get_num_threads())
    stop = rows[0]["completion"][2:4]
    if stop:
        generate_stage.main(
            from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "c"), "stop": [stop]})
        )
        cut = json.loads((tmp_path / "c" / "samples.jsonl").read_text().splitlines()[0])
        assert cut["completion"] == rows[0]["completion"][: rows[0]["completion"].find(stop)]


def test_chat_loop_keeps_history_system_prompt_and_budget(ckpt: Path) -> None:
    from lmforge.inference.engine import Engine
    from lmforge.model.checkpoint import load_model
    from lmforge.tokenizer.train import load_tokenizer

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


def _tiny(root: Path, name: str, tok_path: Path, seed: int, vocab_size: int, n_embd: int = 32) -> Path:
    """A random tiny decoder checkpoint using the tokenizer at ``tok_path``; its matrices are drawn with
    std 0.1 so that two such models' greedy continuations agree on some tokens only (at the default
    init every tiny model repeats the last token, and any draft would be accepted)."""
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig

    torch.manual_seed(seed)
    mcfg = ModelConfig(vocab_size=vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=n_embd)
    model = build_model(mcfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    return save_checkpoint(root / name, model, mcfg, tokenizer_path=tok_path)


@pytest.fixture(scope="module")
def drafts(ckpt: Path, tmp_path_factory) -> dict[str, Path]:
    """A ``target`` with ``ckpt``'s tokenizer and its drafts: ``small`` (another, narrower random model
    with the target's tokenizer), ``padded`` (the target's tokenizer, 8 more embedding rows) and ``other_tok`` (the
    target's vocabulary size, another tokenizer)."""
    from lmforge.tokenizer.train import load_tokenizer, save_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("drafts")
    tok_path = ckpt / "tokenizer.json"
    vocab = load_tokenizer(tok_path).get_vocab_size()
    other = train_bpe(["moon sun park ran dog " * 8, "zebra quartz jumps over lazy vex " * 8] * 10, 300)
    other_path = save_tokenizer(other, root / "tok_other")
    assert other.get_vocab() != load_tokenizer(tok_path).get_vocab()
    return {
        "target": _tiny(root, "target", tok_path, seed=0, vocab_size=vocab),
        "small": _tiny(root, "small", tok_path, seed=1, vocab_size=vocab, n_embd=16),
        "padded": _tiny(root, "padded", tok_path, seed=2, vocab_size=vocab + 8),
        "other_tok": _tiny(
            root, "other_tok", other_path, seed=3, vocab_size=max(vocab, other.get_vocab_size())
        ),
    }


GREEDY = {"prompts": ["the cat sat the cat", "a", "sun moon yes"], "max_new_tokens": 24, "temperature": 0.0}


def test_generate_with_a_draft_model_gives_the_same_greedy_text(
    drafts: dict[str, Path], tmp_path: Path
) -> None:
    """``draft: model`` decodes with a draft model (an input of the stage): the samples of plain greedy
    decoding, with the small draft's tokens partly rejected; the target drafting for itself is accepted
    nearly always (the draft is really used)."""
    target = drafts["target"]
    base = {"model": str(target), **GREEDY}
    plain = generate_stage.main(from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "p")}))
    runs = {}
    for name, draft in (("small", drafts["small"]), ("self", target)):
        runs[name] = generate_stage.main(
            from_dict(
                generate_stage.Config,
                {**base, "out": str(tmp_path / name), "draft": "model", "draft_model": str(draft)},
            )
        )
        samples = (tmp_path / name / "samples.jsonl").read_text()
        assert samples == (tmp_path / "p" / "samples.jsonl").read_text(), name
        m = runs[name]["metrics"]
        assert m["tokens"] == plain["metrics"]["tokens"]
        assert 0 <= m["draft_acceptance"] <= 1 and m["tokens_per_pass"] >= 1
        assert runs[name]["inputs"]["draft_model"]["path"] == str(draft.resolve())
    assert "draft_model" not in plain["inputs"]
    assert 0 < runs["small"]["metrics"]["draft_acceptance"] < 0.9
    assert (
        runs["self"]["metrics"]["draft_acceptance"] > 0.9 and runs["self"]["metrics"]["tokens_per_pass"] > 2
    )
    keys = {plain["cache_key"], runs["small"]["cache_key"], runs["self"]["cache_key"]}
    assert len(keys) == 3  # the draft is part of the cache key


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({"draft": "model"}, "draft_model", "--draft model needs the draft: --draft_model PATH"),
        ({"draft_model": "some/ckpt"}, "draft", "--draft_model some/ckpt is set but draft is 'none'"),
        ({"draft": "ngram", "draft_model": "x"}, "draft", "is set but draft is 'ngram'; use --draft model"),
        ({"draft": "model", "draft_model": "x", "draft_tokens": 0}, "draft_tokens", "must be >= 1"),
    ],
)
@pytest.mark.parametrize("stage", [generate_stage, chat_stage])
def test_draft_options_are_checked_before_any_work(stage, options, key, message, ckpt: Path) -> None:
    from lmforge.config import ConfigError

    with pytest.raises(ConfigError, match=message) as err:
        from_dict(stage.Config, {"model": str(ckpt), **options})
    assert err.value.key == key


def test_generate_cli_refuses_draft_model_without_draft_before_any_work(
    ckpt: Path, tmp_path: Path, capsys
) -> None:
    from lmforge.cli import main

    out = tmp_path / "g"
    code = main(["generate", "--model", str(ckpt), "--out", str(out), "--draft", "model", "-q"])
    assert code == 2 and not out.exists() and not out.with_name("g.partial").exists()
    assert "draft_model: --draft model needs the draft" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("draft", "sizes"),
    [
        ("padded", "the draft model's vocabulary ({v8} tokens) differs from the target's ({v})"),
        ("other_tok", "the draft's tokenizer ({o} tokens) differs from the target's ({t} tokens)"),
    ],
)
def test_a_draft_with_another_vocabulary_is_refused_naming_both_sizes(
    draft: str, sizes: str, ckpt: Path, drafts: dict[str, Path], tmp_path: Path
) -> None:
    from lmforge.config import ConfigError
    from lmforge.tokenizer.train import load_tokenizer

    t = load_tokenizer(ckpt / "tokenizer.json").get_vocab_size()
    o = load_tokenizer(drafts["other_tok"] / "tokenizer.json").get_vocab_size()
    expected = sizes.format(v=t, v8=t + 8, t=t, o=o)
    base = {"model": str(ckpt), **GREEDY, "draft": "model", "draft_model": str(drafts[draft])}
    with pytest.raises(ConfigError, match=re.escape(expected)) as err:
        generate_stage.main(from_dict(generate_stage.Config, {**base, "out": str(tmp_path / "g")}))
    assert err.value.key == "draft_model" and str(drafts[draft]) in str(err.value)
    assert not (tmp_path / "g").exists()
    with pytest.raises(ConfigError, match=re.escape(expected)):
        chat_stage.main(
            from_dict(
                chat_stage.Config,
                {
                    "model": str(ckpt),
                    "draft": "model",
                    "draft_model": str(drafts[draft]),
                    "repetition_penalty": 1,
                },
            )
        )


def test_an_encoder_draft_is_refused(ckpt: Path, tmp_path: Path) -> None:
    from lmforge.config import ConfigError
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import load_tokenizer

    vocab = load_tokenizer(ckpt / "tokenizer.json").get_vocab_size()
    mcfg = ModelConfig(arch="encoder", vocab_size=vocab, block_size=96, n_layer=1, n_head=2, n_embd=32)
    enc = save_checkpoint(tmp_path / "enc", build_model(mcfg), mcfg, tokenizer_path=ckpt / "tokenizer.json")
    cfg = {
        "model": str(ckpt),
        **GREEDY,
        "draft": "model",
        "draft_model": str(enc),
        "out": str(tmp_path / "g"),
    }
    with pytest.raises(ConfigError, match="is an encoder; a draft must be a decoder checkpoint"):
        generate_stage.main(from_dict(generate_stage.Config, cfg))


def _chat(monkeypatch, capsys, cfg: dict) -> tuple[list[str], str]:
    """``lmforge chat``'s ``main`` on two user turns from stdin; returns (stdout lines, stderr)."""
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat sat\nsun moon\n/quit\n"))
    turns = chat_stage.main(from_dict(chat_stage.Config, cfg))["turns"]
    assert turns == 2
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


def test_chat_with_a_draft_gives_the_plain_reply(drafts: dict[str, Path], monkeypatch, capsys) -> None:
    """At temperature 0 and repetition_penalty 1 a draft model or prompt lookup changes nothing in the
    conversation; the header names the draft."""
    target = drafts["target"]
    base = {"model": str(target), "temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": 16}
    plain, err = _chat(monkeypatch, capsys, base)
    assert not err
    for draft in ({"draft": "model", "draft_model": str(drafts["small"])}, {"draft": "ngram"}):
        spec, err = _chat(monkeypatch, capsys, {**base, **draft, "draft_tokens": 3})
        assert not err and f", draft {draft['draft']} " in spec[0] and ", draft" not in plain[0]
        assert spec[1:] == plain[1:] and len(plain) > 1


def test_chat_loop_with_a_self_draft_speculates(drafts: dict[str, Path]) -> None:
    """The chat loop over an engine whose draft is the target itself: same replies, drafts accepted."""
    from lmforge.inference.engine import Engine
    from lmforge.model.checkpoint import load_model
    from lmforge.tokenizer.train import load_tokenizer

    target = drafts["target"]
    model, _ = load_model(target)
    draft, _ = load_model(target)
    tok = load_tokenizer(target / "tokenizer.json")
    cfg = from_dict(chat_stage.Config, {"model": str(target), "temperature": 0.0, "repetition_penalty": 1.0})
    replies = {}
    for name, engine in (("plain", Engine(model, tok)), ("self", Engine(model, tok, draft=draft))):
        out: list[str] = []
        chat_stage.chat_loop(engine, cfg, ["the cat sat", "a mat"], out.append)
        replies[name] = out
    assert replies["self"] == replies["plain"]
    assert engine.stats.drafted > 0 and engine.stats.acceptance > 0.9


def test_chat_warns_once_that_a_penalty_turns_the_draft_off(ckpt: Path, monkeypatch, capsys) -> None:
    """chat's default repetition_penalty 1.1 decodes plainly: a draft asked for is reported once, at
    start, and not loaded (the path below does not exist)."""
    cfg = {"model": str(ckpt), "draft": "model", "draft_model": "/nonexistent/draft", "max_new_tokens": 4}
    out, err = _chat(monkeypatch, capsys, cfg)
    assert err.count("warning") == 1
    assert "--draft model is not used: repetition_penalty 1.1 != 1 decodes plainly" in err
    assert "--repetition_penalty 1" in err and ", draft" not in out[0]
    _, err = _chat(
        monkeypatch, capsys, {**cfg, "draft": "ngram", "draft_model": "", "repetition_penalty": 1.2}
    )
    assert err.count("warning") == 1 and "--draft ngram is not used: repetition_penalty 1.2" in err


@pytest.mark.parametrize("name", ["generate", "chat"])
def test_help_shows_the_draft_options(name: str, capsys) -> None:
    from lmforge.cli import main

    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--draft ", "--draft_model ", "--draft_tokens "):
        assert option in out, option
    assert "type: none|ngram|model" in out
    assert "not used when repetition_penalty != 1 (plain decoding then)" in out
    if name == "chat":  # chat penalises repetition by default, so its help shows drafts are off unless 1
        assert "--repetition_penalty" in out and "type: float; default: 1.1" in out
