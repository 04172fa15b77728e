"""Tests for lmforge.model.config: validation errors name the key, dict round trip, derived sizes, presets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig, preset


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"n_embd": 100, "n_head": 3}, "n_embd", "n_embd (100) must be divisible by n_head (3)"),
        ({"n_head": 4, "n_kv_head": 3}, "n_kv_head", "n_head (4) must be divisible by n_kv_head (3)"),
        ({"n_head": 4, "n_kv_head": 8}, "n_kv_head", "must be divisible"),
        (
            {"n_embd": 60, "n_head": 4, "pos": "rope"},
            "n_embd",
            "head_dim (n_embd // n_head = 15) must be even",
        ),
        ({"n_embd": 63, "n_head": 1, "pos": "sinusoidal"}, "n_embd", "must be even"),
        ({"mlp": "reglu"}, "mlp", "swiglu, gelu, relu2"),
        ({"norm": "batchnorm"}, "norm", "rmsnorm, layernorm"),
        ({"pos": "nope"}, "pos", "rope, learned, sinusoidal, alibi"),
        ({"n_layer": 0}, "n_layer", "must be > 0"),
        ({"block_size": -1}, "block_size", "must be > 0"),
        ({"n_head": 0}, "n_head", "must be > 0"),
        ({"n_embd": 0}, "n_embd", "must be > 0"),
        ({"vocab_size": -5}, "vocab_size", "must be >= 0"),
        ({"n_kv_head": -1}, "n_kv_head", "must be >= 0"),
        ({"mlp_hidden": -1}, "mlp_hidden", "must be >= 0"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"dropout": -0.1}, "dropout", "[0, 1)"),
        ({"rope_theta": 0.0}, "rope_theta", "> 0"),
        ({"norm_eps": 0.0}, "norm_eps", "> 0"),
        ({"n_layer": "4"}, "n_layer", "type int"),
        ({"qk_norm": 1}, "qk_norm", "type bool"),
        ({"n_layer": True}, "n_layer", "type int"),
    ],
)
def test_validate_names_the_key(overrides: dict, key: str, fragment: str) -> None:
    cfg = ModelConfig(**overrides)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.key == key
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_embd": 60, "n_head": 4, "pos": "learned"},  # odd head_dim is fine without rope
        {"n_head": 8, "n_kv_head": 2, "n_embd": 64},
        {"rope_theta": 500000},  # an int where a float is expected
        {"vocab_size": 0},  # 0 = from the tokenizer: valid for a config, not for a model
    ],
)
def test_valid_configs_pass(overrides: dict) -> None:
    ModelConfig(**overrides).validate()


def test_every_field_has_one_line_help() -> None:
    for f in dataclasses.fields(ModelConfig):
        assert f.metadata.get("help") and "\n" not in f.metadata["help"], f.name


def test_to_dict_holds_format_and_input_fields_only() -> None:
    d = ModelConfig().to_dict()
    assert d["format"] == 1
    assert set(d) == {"format"} | {f.name for f in dataclasses.fields(ModelConfig)}
    assert "head_dim" not in d and "hidden_dim" not in d and "kv_heads" not in d


def test_dict_round_trip_through_json() -> None:
    cfg = ModelConfig(
        vocab_size=300, n_layer=3, n_kv_head=2, mlp="relu2", pos="alibi", qk_norm=True, dropout=0.1
    )
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(ModelConfig.from_dict({"format": 1, "rope_theta": 500000}).rope_theta, float)


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"format": 1, "n_embed": 128}, "n_embed"),  # typo of n_embd
        ({"format": 2}, "format"),
        ({"n_layer": 2}, "format"),
        ({"format": 1, "n_embd": 100, "n_head": 3}, "n_embd"),  # from_dict validates
    ],
)
def test_from_dict_rejects(d: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(d)
    assert info.value.key == key


def test_derived_sizes() -> None:
    assert ModelConfig(n_embd=256, mlp="swiglu").hidden_dim == 704  # 8*256/3 = 682.7 -> next multiple of 64
    assert ModelConfig(n_embd=192, mlp="swiglu").hidden_dim == 512  # exactly 8/3 * 192
    assert ModelConfig(n_embd=256, mlp="gelu").hidden_dim == 1024
    assert ModelConfig(n_embd=256, mlp="relu2").hidden_dim == 1024
    assert ModelConfig(mlp_hidden=100).hidden_dim == 100
    cfg = ModelConfig(n_embd=256, n_head=8)
    assert (cfg.head_dim, cfg.kv_heads) == (32, 8)
    assert ModelConfig(n_head=8, n_kv_head=2).kv_heads == 2


def test_preset_is_driven_by_depth() -> None:
    assert preset(4) == {"n_layer": 4, "n_embd": 256, "n_head": 4}
    assert preset(1) == {"n_layer": 1, "n_embd": 64, "n_head": 1}
    for depth in range(1, 13):
        cfg = ModelConfig(**preset(depth))
        cfg.validate()
        assert cfg.head_dim == 64
    with pytest.raises(ConfigError) as info:
        preset(0)
    assert info.value.key == "depth"
