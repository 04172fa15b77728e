"""Tests for lmforge.model.hf_names: key table, state-dict mapping, Llama configs, RoPE and logits parity."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder, apply_rope, rope_tables
from lmforge.model.hf_names import (
    check_llama_config,
    decoder_shapes,
    from_hf_key,
    from_hf_state_dict,
    to_hf_key,
    to_hf_state_dict,
    to_llama_config,
)

VOCAB = 64


def tiny(**overrides) -> ModelConfig:
    base = {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32}
    return ModelConfig(**{**base, "mlp_hidden": 48, **overrides})


def build(cfg: ModelConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(cfg).eval()
    with torch.no_grad():  # norm gains and biases off their init values, so a swapped key would show
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_key_table() -> None:
    expected = {
        "tok_emb.weight": "model.embed_tokens.weight",
        "blocks.3.attn_norm.weight": "model.layers.3.input_layernorm.weight",
        "blocks.3.attn.q_proj.weight": "model.layers.3.self_attn.q_proj.weight",
        "blocks.3.attn.o_proj.bias": "model.layers.3.self_attn.o_proj.bias",
        "blocks.12.mlp_norm.weight": "model.layers.12.post_attention_layernorm.weight",
        "blocks.0.mlp.gate_proj.weight": "model.layers.0.mlp.gate_proj.weight",
        "blocks.0.mlp.down_proj.weight": "model.layers.0.mlp.down_proj.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    for ours, hf in expected.items():
        assert to_hf_key(ours) == hf
        assert from_hf_key(hf) == ours


@pytest.mark.parametrize("tie", [True, False])
def test_every_decoder_key_round_trips(tie: bool) -> None:
    cfg = tiny(bias=True, tie_embeddings=tie)
    keys = list(Decoder(cfg).state_dict())
    assert set(keys) == set(decoder_shapes(cfg))
    assert [from_hf_key(to_hf_key(k)) for k in keys] == keys
    assert len({to_hf_key(k) for k in keys}) == len(keys)


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("pos_emb.weight", "known keys"),
        ("blocks.0.attn.q_norm.weight", "known keys"),
        ("blocks.0.attn.q_proj.base.weight", "merged_state_dict"),
        ("blocks.0.attn.q_proj.lora_A", "merged_state_dict"),
        ("blocks.x.attn.q_proj.weight", "known keys"),
    ],
)
def test_unmappable_keys_are_named(key: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint) as err:
        to_hf_key(key)
    assert repr(key) in str(err.value)
    with pytest.raises(ValueError, match="known keys"):
        from_hf_key("model.layers.0.self_attn.rotary_emb.weight")


@pytest.mark.parametrize(
    ("field", "value"),
    [("arch", "encoder"), ("pos", "learned"), ("norm", "layernorm"), ("mlp", "gelu"), ("qk_norm", True)],
)
def test_configs_llama_cannot_represent_name_the_field(field: str, value: object) -> None:
    cfg = tiny(**{field: value})
    for call in (
        lambda: check_llama_config(cfg),
        lambda: to_hf_state_dict({}, cfg),
        lambda: from_hf_state_dict({}, cfg),
        lambda: to_llama_config(cfg),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert err.value.key == field and "Llama" in str(err.value)


@pytest.mark.parametrize("tie", [True, False])
def test_state_dict_round_trip(tie: bool) -> None:
    cfg = tiny(tie_embeddings=tie, bias=True)
    model = build(cfg)
    state = model.state_dict()
    hf = to_hf_state_dict(state, cfg)
    assert hf["model.layers.1.self_attn.k_proj.weight"] is state["blocks.1.attn.k_proj.weight"]
    if tie:
        assert hf["lm_head.weight"] is hf["model.embed_tokens.weight"]
        # a checkpoint stores the tied head once; both directions accept it without the head
        no_head = {k: v for k, v in state.items() if k != "lm_head.weight"}
        assert set(to_hf_state_dict(no_head, cfg)) == set(hf)
        from_hf = from_hf_state_dict({k: v for k, v in hf.items() if k != "lm_head.weight"}, cfg)
        assert from_hf["lm_head.weight"] is from_hf["tok_emb.weight"]
    back = from_hf_state_dict(hf, cfg)
    assert set(back) == set(state)
    fresh = Decoder(cfg)
    fresh.load_state_dict(back)  # strict
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_state_dict_errors() -> None:
    cfg = tiny()
    state = build(cfg).state_dict()
    untied = {**state, "lm_head.weight": state["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="tie_embeddings=True but lm_head.weight differs"):
        to_hf_state_dict(untied, cfg)
    hf = {**to_hf_state_dict(state, cfg), "lm_head.weight": untied["lm_head.weight"]}
    with pytest.raises(ValueError, match="tie_embeddings=True but lm_head.weight differs"):
        from_hf_state_dict(hf, cfg)
    with pytest.raises(ValueError, match=r"missing \['blocks.1.mlp.up_proj.weight'\]"):
        to_hf_state_dict({k: v for k, v in state.items() if k != "blocks.1.mlp.up_proj.weight"}, cfg)
    with pytest.raises(
        ValueError, match=r"blocks.0.mlp.gate_proj.weight has shape \(48, 32\), the config needs \(64, 32\)"
    ):
        to_hf_state_dict(state, tiny(mlp_hidden=64))
    with pytest.raises(ValueError, match=r"unexpected \['blocks.2"):
        to_hf_state_dict(build(tiny(n_layer=3)).state_dict(), cfg)
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        from_hf_state_dict({k: v for k, v in hf.items() if k != "lm_head.weight"}, tiny(tie_embeddings=False))
    rotary = {**to_hf_state_dict(state, cfg), "model.rotary_emb.inv_freq": torch.ones(4)}
    assert "model.rotary_emb.inv_freq" not in from_hf_state_dict(rotary, cfg)  # old HF buffers ignored


@pytest.mark.slow  # importing transformers alone takes several seconds
def test_llama_config_fields() -> None:
    pytest.importorskip("transformers")
    cfg = tiny(rope_theta=500.0, norm_eps=1e-6, bias=True, tie_embeddings=False, block_size=64)
    llama = to_llama_config(cfg)
    assert (llama.vocab_size, llama.hidden_size, llama.intermediate_size) == (VOCAB, 32, 48)
    assert (llama.num_hidden_layers, llama.num_attention_heads, llama.num_key_value_heads) == (2, 4, 2)
    assert (llama.head_dim, llama.max_position_embeddings, llama.rms_norm_eps) == (8, 64, 1e-6)
    assert llama.rope_parameters["rope_theta"] == 500.0 and llama.hidden_act == "silu"
    assert llama.attention_bias and llama.mlp_bias and not llama.tie_word_embeddings
    assert (llama.bos_token_id, llama.eos_token_id, llama.pad_token_id) == (0, 1, 2)
    assert to_llama_config(cfg, eos_token_id=5).eos_token_id == 5


@pytest.mark.slow  # importing transformers alone takes several seconds
def test_rope_layout_equals_hf_rotate_half() -> None:
    """Our half-split RoPE equals HF Llama's rotate_half RoPE on the same channels: no permutation."""
    pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama

    cfg = tiny(n_embd=64, n_head=4, rope_theta=1000.0)  # head_dim 16
    rotary = modeling_llama.LlamaRotaryEmbedding(config=to_llama_config(cfg))
    x = torch.randn(2, 4, 10, cfg.head_dim)  # [B, H, T, Q]
    positions = torch.arange(10)[None]  # [1, T]
    cos, sin = rotary(x, positions)  # [1, T, Q] each
    theirs, _ = modeling_llama.apply_rotary_pos_emb(x, x, cos, sin)
    ours = apply_rope(x, *(t[:10] for t in rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_theta)))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.slow  # importing transformers alone takes several seconds
@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": False, "n_kv_head": 4}, {"bias": True, "rope_theta": 500.0, "norm_eps": 1e-6}],
)
def test_hf_llama_logits_equal_ours(overrides: dict) -> None:
    """LlamaForCausalLM built by to_llama_config + to_hf_state_dict computes our logits, and back."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny(**overrides)
    model = build(cfg)
    hf = transformers.LlamaForCausalLM(to_llama_config(cfg)).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg))  # strict: every key, no extras
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)
        torch.testing.assert_close(hf(input_ids=idx).logits, ours, rtol=0, atol=2e-5)
        fresh = Decoder(cfg).eval()
        fresh.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
        torch.testing.assert_close(fresh(idx), ours, rtol=0, atol=0)
