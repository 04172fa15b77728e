"""lmforge export to Hugging Face: a checkpoint → LlamaForCausalLM directory with equal logits, a tokenizer
AutoTokenizer loads offline (same ids, same chat text), and refusals that name every gap and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.interop.hf_export import HF_FILES, export_hf, verify_hf_export
from lmforge.model.config import ModelConfig

pytestmark = pytest.mark.slow  # importing transformers alone takes several seconds
transformers = pytest.importorskip("transformers")

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no".split()


def tiny_tokenizer(root: Path) -> Path:
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    tok = train_bpe([" ".join(WORDS) * 4, " ".join(reversed(WORDS)) * 4] * 10, vocab_size=300)
    return save_tokenizer(tok, root / "tok")


def tiny_checkpoint(root: Path, seed: int = 0, vocab_pad: int = 0, **overrides) -> Path:
    """A saved checkpoint with norms and biases moved off their init values (a swapped key would show)."""
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.tokenizer.train import load_tokenizer

    tok_path = tiny_tokenizer(root)
    vocab = load_tokenizer(tok_path).get_vocab_size() + vocab_pad
    base = {"vocab_size": vocab, "block_size": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32}
    cfg = ModelConfig(**{**base, **overrides})
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                p.add_(torch.randn_like(p) * 0.1)
    return save_checkpoint(root / "ckpt", model, cfg, tokenizer_path=tok_path)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": False, "n_kv_head": 4},
        {"bias": True, "rope_theta": 500.0, "norm_eps": 1e-6, "mlp_hidden": 40},
    ],
)
def test_export_loads_in_transformers_with_equal_logits(tmp_path: Path, overrides: dict) -> None:
    ckpt = tiny_checkpoint(tmp_path, **overrides)
    out = tmp_path / "hf"
    exported = export_hf(ckpt, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(HF_FILES)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, exported.tokenizer_size, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, exported.model(idx), rtol=0, atol=1e-4)
    assert verify_hf_export(out, exported.model, exported.tokenizer_size) < 1e-4
    if exported.model.config.tie_embeddings:  # the tied head is stored once, and tied again on load
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" not in f.keys()
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_exported_tokenizer_matches_lmforge(tmp_path: Path) -> None:
    from lmforge.tokenizer.chat import render_chat, render_chat_text
    from lmforge.tokenizer.train import load_tokenizer

    ckpt = tiny_checkpoint(tmp_path)
    export_hf(ckpt, tmp_path / "hf")
    ours = load_tokenizer(ckpt / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = "the cat sat on a mat, and the dog ran to the park!"
    assert (
        theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text, add_special_tokens=False).ids
    )
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (0, 1, 2)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chat = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == render_chat_text(messages, add_generation_prompt=True)
    assert (
        theirs(chat, add_special_tokens=False)["input_ids"]
        == render_chat(ours, messages, add_generation_prompt=True)[0]
    )
    # as lmforge generate feeds a prompt: <|bos|> then the text, once, whichever way it is encoded
    bos = ours.token_to_id("<|bos|>")
    assert theirs(text)["input_ids"] == [bos] + ours.encode(text, add_special_tokens=False).ids
    assert theirs("a", "b")["input_ids"].count(bos) == 1
    tokenized = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = tokenized["input_ids"] if isinstance(tokenized, dict) or hasattr(tokenized, "keys") else tokenized
    assert ids == render_chat(ours, messages, add_generation_prompt=True)[0] and ids.count(bos) == 1
    assert theirs.decode(theirs(text)["input_ids"], skip_special_tokens=True) == text
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 0 and gen["eos_token_id"] == [1, ours.token_to_id("<|end|>")]


def test_padded_vocabulary_and_bfloat16(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, vocab_pad=20)  # more embedding rows than tokens, as a padded model
    exported = export_hf(ckpt, tmp_path / "hf", dtype="bfloat16")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert hf.config.vocab_size == exported.model.config.vocab_size == exported.tokenizer_size + 20
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    expected = exported.model.tok_emb.weight.detach().to(torch.bfloat16)
    assert torch.equal(hf.model.embed_tokens.weight, expected)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"pos": "learned"}, ["pos='learned'"]),
        ({"norm": "layernorm", "mlp": "gelu"}, ["norm='layernorm'", "mlp='gelu'"]),
        (
            {"pos": "alibi", "norm": "layernorm", "mlp": "relu2"},
            ["pos='alibi'", "norm='layernorm'", "mlp='relu2'", "Llama has only RMSNorm"],
        ),
        ({"pos": "sinusoidal", "mlp": "gelu_tanh"}, ["pos='sinusoidal'", "mlp='gelu_tanh'"]),
    ],
)
def test_configs_llama_lacks_are_refused_before_writing(tmp_path: Path, overrides: dict, named: list) -> None:
    ckpt = tiny_checkpoint(tmp_path, **overrides)
    with pytest.raises(ConfigError) as err:
        export_hf(ckpt, tmp_path / "hf")
    for part in named:
        assert part in str(err.value)
    assert "no Hugging Face Llama equivalent" in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_configs_no_family_expresses_are_refused_before_writing(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, qk_norm=True, pos="alibi", norm="layernorm")
    with pytest.raises(ConfigError) as err:
        export_hf(ckpt, tmp_path / "hf")
    assert "as Qwen3 (chosen for qk_norm=True): pos='alibi'" in str(err.value)
    assert "norm='layernorm'" in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_encoder_is_refused_with_the_reason(tmp_path: Path) -> None:
    from lmforge.model.checkpoint import save_checkpoint
    from lmforge.model.heads import EncoderForPretraining

    cfg = ModelConfig(
        arch="encoder", vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16, pos="learned"
    )
    ckpt = save_checkpoint(
        tmp_path / "enc", EncoderForPretraining(cfg), cfg, tokenizer_path=tiny_tokenizer(tmp_path)
    )
    with pytest.raises(ConfigError, match="post-norm") as err:
        export_hf(ckpt, tmp_path / "hf")
    assert err.value.key == "arch" and "BertForMaskedLM" in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_greedy_generation_in_transformers_equals_lmforge(tmp_path: Path) -> None:
    """tok(prompt) + model.generate in transformers continues a prompt as lmforge's engine does: the
    exported tokenizer puts <|bos|> first, as lmforge generate does."""
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams
    from lmforge.model.checkpoint import load_model
    from lmforge.tokenizer.train import load_tokenizer

    ckpt = tiny_checkpoint(tmp_path)
    export_hf(ckpt, tmp_path / "hf")
    theirs_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    tok = load_tokenizer(ckpt / "tokenizer.json")
    model, _ = load_model(ckpt)
    prompt = "the cat sat on"
    ours_ids = [tok.token_to_id("<|bos|>")] + tok.encode(prompt, add_special_tokens=False).ids
    ours = Engine(model, tok).generate(
        [ours_ids], SamplingParams(max_new_tokens=8, temperature=0, stop_ids=[])
    )
    enc = theirs_tok(prompt, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == ours_ids
    out = theirs.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=None, min_new_tokens=8)
    assert out[0, len(ours_ids) :].tolist() == ours[0].ids
