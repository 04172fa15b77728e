"""Qwen2, Qwen3, Mistral and Gemma both ways: tiny random transformers models built in-process (never
downloaded) import with equal logits and export back to the same family with equal logits; what the
decoder cannot compute is refused by name, before any weight is read."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lmforge.errors import ConfigError, InputError
from lmforge.model.config import ModelConfig

pytestmark = pytest.mark.slow  # importing transformers alone takes several seconds
transformers = pytest.importorskip("transformers")

from lmforge.interop import hf_import  # noqa: E402  (after the skip: it is only useful with transformers)
from lmforge.interop.hf_export import export_hf  # noqa: E402
from lmforge.interop.hf_families import check_family, export_family  # noqa: E402

CASES = [
    ("Qwen2", {}, {"qkv_bias": True}, "Qwen2ForCausalLM"),
    (
        "Qwen2",
        {
            "tie_word_embeddings": True,
            "use_sliding_window": True,
            "sliding_window": 16,
            "max_window_layers": 1,
        },
        {"qkv_bias": True, "tie_embeddings": True, "block_size": 16},
        "Qwen2ForCausalLM",
    ),
    ("Qwen3", {"rms_norm_eps": 1e-5}, {"qk_norm": True, "norm_eps": 1e-5}, "Qwen3ForCausalLM"),
    ("Mistral", {"sliding_window": 16}, {"block_size": 16, "mlp": "swiglu"}, "LlamaForCausalLM"),
    ("Mistral", {"sliding_window": None, "rope_theta": 500.0}, {"rope_theta": 500.0}, "LlamaForCausalLM"),
    ("Gemma", {}, {"mlp": "geglu", "scale_emb": True, "tie_embeddings": True}, "GemmaForCausalLM"),
    ("Gemma", {"tie_word_embeddings": False}, {"tie_embeddings": False}, "GemmaForCausalLM"),
]


@pytest.mark.parametrize(("family", "overrides", "expected", "exported_as"), CASES)
def test_family_imports_and_exports_with_equal_logits(
    tmp_path: Path,
    tiny_tokenizer_json: Path,
    hf_family_dir: Callable[..., Path],
    family: str,
    overrides: dict,
    expected: dict,
    exported_as: str,
) -> None:
    from lmforge.model.checkpoint import save_checkpoint

    read = hf_import.read_hf_model(hf_family_dir(tmp_path / "hf", family, tiny_tokenizer_json, **overrides))
    assert read.model_type == family.lower()
    for key, value in expected.items():
        assert getattr(read.config, key) == value, key
    model = hf_import.build_decoder(read.config, read.state)
    T = read.config.block_size
    idx = torch.randint(0, read.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), read.hf(input_ids=idx).logits, rtol=0, atol=1e-4)

    ckpt = save_checkpoint(tmp_path / "ckpt", model, read.config, tokenizer_path=tiny_tokenizer_json)
    exported = export_hf(ckpt, tmp_path / "out")
    assert exported.family == export_family(read.config)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True).eval()
    assert type(back).__name__ == exported_as
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=idx).logits, model(idx), rtol=0, atol=1e-4)
    again = hf_import.read_hf_model(tmp_path / "out")  # and in again: the same config and weights
    assert again.config == read.config
    for key, value in read.state.items():
        torch.testing.assert_close(again.state[key], value, rtol=0, atol=1e-6)


def test_gemma_gains_are_folded_on_import_and_unfolded_on_export(
    tmp_path: Path, tiny_tokenizer_json: Path, hf_family_dir: Callable[..., Path]
) -> None:
    from lmforge.interop.hf_families import to_family_state_dict

    read = hf_import.read_hf_model(hf_family_dir(tmp_path, "Gemma", tiny_tokenizer_json))
    stored = read.hf.model.layers[1].post_attention_layernorm.weight
    assert torch.equal(read.state["blocks.1.mlp_norm.weight"], stored + 1)
    assert torch.equal(read.state["norm.weight"], read.hf.model.norm.weight + 1)
    out = to_family_state_dict(read.state, read.config)
    torch.testing.assert_close(
        out["model.layers.1.post_attention_layernorm.weight"], stored, rtol=0, atol=1e-7
    )
    assert out["model.layers.1.self_attn.q_proj.weight"] is read.state["blocks.1.attn.q_proj.weight"]


def write_config(root: Path, config: transformers.PretrainedConfig) -> Path:
    """A directory with only ``config.json``: refusals must come before any weight is read."""
    config.save_pretrained(root)
    return root


@pytest.mark.parametrize(
    ("family", "overrides", "named"),
    [
        ("Qwen3", {"head_dim": 16}, ["head_dim 16 * 4 heads != hidden_size 32"]),
        ("Qwen3", {"attention_bias": True}, ["attention_bias=True", "o_proj"]),
        (
            "Qwen2",
            {
                "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                "hidden_act": "gelu",
            },
            ["rope scaling", "hidden_act 'gelu'"],
        ),
        (
            "Gemma",
            {"attention_bias": True, "use_bidirectional_attention": True},
            ["attention_bias=True", "causal"],
        ),
        ("Mistral", {"head_dim": 4}, ["head_dim 4"]),
    ],
)
def test_settings_the_decoder_lacks_are_refused(
    tmp_path: Path, hf_tiny_config: dict, family: str, overrides: dict, named: list
) -> None:
    config = getattr(transformers, f"{family}Config")(**{**hf_tiny_config, "vocab_size": 64, **overrides})
    with pytest.raises(ConfigError) as err:
        hf_import.read_hf_config(write_config(tmp_path, config))
    for part in named:
        assert part in str(err.value)
    assert f"cannot import this {family} model exactly" in str(err.value)


def test_gemma2_is_refused_naming_what_differs(tmp_path: Path, hf_tiny_config: dict) -> None:
    config = transformers.Gemma2Config(**{**hf_tiny_config, "vocab_size": 64})
    with pytest.raises(ConfigError) as err:
        hf_import.read_hf_config(write_config(tmp_path, config))
    message = str(err.value)
    for part in ("gemma2", "attn_logit_softcapping=50.0", "final_logit_softcapping=30.0", "four norms"):
        assert part in message
    assert "supported: llama, gpt2, qwen2, qwen3, mistral, gemma, bert" in message


def test_unknown_model_type_lists_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(InputError, match="model_type 't5' cannot be imported") as err:
        hf_import.read_hf_config(tmp_path)
    assert str(err.value).endswith("supported: llama, gpt2, qwen2, qwen3, mistral, gemma, bert")


def test_export_picks_the_family_and_refuses_what_none_expresses() -> None:
    base = {"vocab_size": 64, "block_size": 16, "n_layer": 1, "n_head": 4, "n_embd": 32}
    picks = [
        ({}, "llama"),
        ({"bias": True}, "llama"),
        ({"qkv_bias": True}, "qwen2"),
        ({"qk_norm": True}, "qwen3"),
        ({"scale_emb": True, "mlp": "geglu"}, "gemma"),
    ]
    for overrides, family in picks:
        assert check_family(ModelConfig(**base, **overrides)) == family, overrides
    refused = [
        (
            {"qk_norm": True, "qkv_bias": True},
            "qkv_bias",
            ["as Qwen3 (chosen for qk_norm=True)", "qkv_bias=True"],
        ),
        ({"scale_emb": True}, "mlp", ["as Gemma (chosen for scale_emb=True)", "mlp='swiglu'"]),
        ({"mlp": "geglu", "bias": True}, "bias", ["Gemma needs bias=False", "scale_emb=False"]),
        ({"qkv_bias": True, "pos": "alibi"}, "pos", ["Qwen2 needs pos='rope'"]),
    ]
    for overrides, key, named in refused:
        with pytest.raises(ConfigError) as err:
            check_family(ModelConfig(**base, **overrides))
        assert err.value.key == key, overrides
        for part in named:
            assert part in str(err.value), (overrides, part)
