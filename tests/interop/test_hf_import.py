"""lmforge import from Hugging Face: tiny random Llama and GPT-2 models built in-process and saved with
save_pretrained (never downloaded) map onto a Decoder with equal logits; lmforge's tokens are added
without moving an id; settings the decoder cannot reproduce are refused by name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, InputError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import MLP

pytestmark = pytest.mark.slow  # importing transformers alone takes several seconds
transformers = pytest.importorskip("transformers")

from lmforge.interop import hf_import  # noqa: E402  (after the skip: it is only useful with transformers)

TEXT = "the cat sat on a mat and the dog ran to the park " * 20


@pytest.fixture
def save_llama(hf_family_dir: Callable[..., Path], tiny_tokenizer_json: Path) -> Callable[..., Path]:
    """``save(root, **overrides)``: a Llama directory whose tokenizer.json is an lmforge tokenizer (so it
    already has our tokens)."""
    return lambda root, **overrides: hf_family_dir(
        root, "Llama", tiny_tokenizer_json, pad_token_id=None, **overrides
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_word_embeddings": True, "num_key_value_heads": 4},
        {"attention_bias": True, "mlp_bias": True, "rms_norm_eps": 1e-5, "rope_theta": 500.0},
    ],
)
def test_llama_imports_with_equal_logits(
    tmp_path: Path, overrides: dict, save_llama: Callable[..., Path]
) -> None:
    read = hf_import.read_hf_model(save_llama(tmp_path, **overrides))
    assert read.model_type == "llama" and read.config.tie_embeddings == overrides.get(
        "tie_word_embeddings", False
    )
    tok = hf_import.read_hf_tokenizer(tmp_path)
    assert hf_import.add_lmforge_tokens(tok) == []  # an lmforge tokenizer already has every token
    model = hf_import.build_decoder(read.config, read.state)
    idx = torch.randint(0, read.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), read.hf(input_ids=idx).logits, rtol=0, atol=1e-4)
    if "rope_theta" in overrides:
        assert read.config.rope_theta == 500.0 and read.config.bias


@pytest.mark.parametrize("slow_files", [True, False])
def test_gpt2_imports_with_equal_logits_and_lmforge_tokens(
    tmp_path: Path, slow_files: bool, gpt2_hf_dir: Callable[..., Path]
) -> None:
    hf_dir = gpt2_hf_dir(tmp_path, slow_files=slow_files)
    assert (hf_dir / "tokenizer.json").exists() != slow_files
    read = hf_import.read_hf_model(hf_dir)
    cfg = read.config
    assert (cfg.pos, cfg.norm, cfg.mlp, cfg.bias, cfg.tie_embeddings) == (
        "learned",
        "layernorm",
        "gelu_tanh",
        True,
        True,
    )
    tok = hf_import.read_hf_tokenizer(hf_dir)
    n = tok.get_vocab_size(with_added_tokens=True)
    before = tok.encode(TEXT[:80]).ids
    added = hf_import.add_lmforge_tokens(tok)
    assert added == list(hf_import.LMFORGE_TOKENS)
    assert tok.encode(TEXT[:80]).ids == before  # no existing id moved
    assert [tok.token_to_id(t) for t in added] == list(range(n, n + len(added)))
    state, grown = hf_import.grow_vocab(read.state, cfg, tok, added, read.special)
    assert grown.vocab_size == n + len(added)
    model = hf_import.build_decoder(grown, state)
    eot = tok.token_to_id("<|endoftext|>")
    emb = model.tok_emb.weight
    for token in ("<|bos|>", "<|eos|>", "<|pad|>"):  # GPT-2 has no pad: it falls back to eos
        assert torch.equal(emb[tok.token_to_id(token)], emb[eot])
    assert torch.allclose(emb[tok.token_to_id("<|user|>")], read.state["tok_emb.weight"].mean(0))
    idx = torch.randint(0, n, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(idx), read.hf(input_ids=idx).logits
    torch.testing.assert_close(ours[..., :n], theirs, rtol=0, atol=1e-4)
    assert hf_import.max_logit_difference(model, read.hf, n) < 1e-4


def test_gelu_tanh_mlp_is_the_tanh_approximation() -> None:
    cfg = ModelConfig(vocab_size=8, n_embd=16, mlp="gelu_tanh", bias=True)
    mlp, x = MLP(cfg), torch.randn(2, 3, 16)
    expected = mlp.down_proj(F.gelu(mlp.up_proj(x), approximate="tanh"))
    torch.testing.assert_close(mlp(x), expected)
    exact = mlp.down_proj(F.gelu(mlp.up_proj(x)))
    assert not torch.equal(mlp(x), exact)  # the two GELUs differ, so the option matters


def test_untied_gpt2_grows_the_output_head_too(tmp_path: Path, gpt2_hf_dir: Callable[..., Path]) -> None:
    read = hf_import.read_hf_model(gpt2_hf_dir(tmp_path, tie_word_embeddings=False))
    assert not read.config.tie_embeddings
    tok = hf_import.read_hf_tokenizer(tmp_path)
    n = tok.get_vocab_size(with_added_tokens=True)
    added = hf_import.add_lmforge_tokens(tok)
    state, grown = hf_import.grow_vocab(read.state, read.config, tok, added, read.special)
    model = hf_import.build_decoder(grown, state)
    assert model.lm_head.weight.shape[0] == grown.vocab_size
    assert hf_import.max_logit_difference(model, read.hf, n) < 1e-4


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"hidden_act": "gelu"}, ["hidden_act 'gelu'"]),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, ["rope scaling"]),
        ({"attention_bias": True, "mlp_bias": False}, ["attention_bias=True but mlp_bias=False"]),
        ({"head_dim": 16}, ["head_dim 16"]),
    ],
)
def test_llama_settings_the_decoder_lacks_are_refused(tmp_path: Path, overrides: dict, named: list) -> None:
    base = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1}
    config = transformers.LlamaConfig(**{**base, "num_attention_heads": 4, **overrides})
    from lmforge.model.hf_names import from_llama_config

    with pytest.raises(ConfigError) as err:
        from_llama_config(config)
    for part in named:
        assert part in str(err.value)


def test_gpt2_settings_the_decoder_lacks_are_refused() -> None:
    from lmforge.model.hf_names import from_gpt2_config

    config = transformers.GPT2Config(activation_function="relu", scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ConfigError) as err:
        from_gpt2_config(config)
    assert "activation_function 'relu'" in str(err.value)
    assert "scale_attn_by_inverse_layer_idx" in str(err.value)


def test_bad_directories_fail_clearly(tmp_path: Path, gpt2_hf_dir: Callable[..., Path]) -> None:
    with pytest.raises(InputError, match="no config.json"):
        hf_import.read_hf_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(InputError, match="model_type 't5' cannot be imported; supported: llama, gpt2, "):
        hf_import.read_hf_model(tmp_path)
    gpt2 = gpt2_hf_dir(tmp_path / "g")
    for name in ("vocab.json", "merges.txt"):
        (gpt2 / name).unlink()
    with pytest.raises(InputError, match="no tokenizer.json and no tokenizer files"):
        hf_import.read_hf_tokenizer(gpt2)


def test_bfloat16_weights_import_as_float32(tmp_path: Path, save_llama: Callable[..., Path]) -> None:
    save_llama(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "bf16")
    (tmp_path / "bf16" / "tokenizer.json").write_text((tmp_path / "tokenizer.json").read_text())
    read = hf_import.read_hf_model(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in read.state.values())
    expected = hf.model.embed_tokens.weight.float()
    assert torch.equal(read.state["tok_emb.weight"], expected)
    model = hf_import.build_decoder(read.config, read.state)
    assert hf_import.max_logit_difference(model, read.hf, read.config.vocab_size) < 1e-4


def test_added_tokens_take_unused_rows_of_a_padded_vocabulary(
    tmp_path: Path, gpt2_tokenizer: Callable, gpt2_hf_dir: Callable[..., Path]
) -> None:
    n = gpt2_tokenizer([TEXT] * 10).get_vocab_size()
    read = hf_import.read_hf_model(gpt2_hf_dir(tmp_path, vocab_size=n + 10))
    tok = hf_import.read_hf_tokenizer(tmp_path)
    added = hf_import.add_lmforge_tokens(tok)
    state, grown = hf_import.grow_vocab(read.state, read.config, tok, added, read.special)
    assert grown.vocab_size == n + 10  # 7 added tokens fit in the 10 unused rows
    assert torch.equal(state["tok_emb.weight"][n + 7 :], read.state["tok_emb.weight"][n + 7 :])
    model = hf_import.build_decoder(grown, state)
    assert hf_import.max_logit_difference(model, read.hf, n, columns=n) < 1e-4
    assert hf_import.max_logit_difference(model, read.hf, n) > 1e-3  # the taken rows did change
