"""The memory estimate: parameter counts equal the built model's, a run that cannot fit is refused
naming the dominant key, ``LMFORGE_MEMORY_LIMIT`` overrides, and no shipped recipe is refused at 4 GiB."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from lmforge.config import load_yaml
from lmforge.errors import ConfigError
from lmforge.model import memory
from lmforge.model.checkpoint import build_model
from lmforge.model.config import ModelConfig
from lmforge.model.memory import LIMIT_ENV, check_fits, estimate, param_counts

GiB = 1 << 30
RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.fixture
def four_gib(monkeypatch):
    """A machine with 4 GiB available (psutil/meminfo not consulted)."""
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: (4 * GiB, "mocked"))


@pytest.mark.parametrize(
    "arch, pos, mlp, norm, bias, tie",
    list(itertools.product(["decoder", "encoder"], ["rope", "learned"], ["swiglu", "gelu"], ["rmsnorm", "layernorm"], [False, True], [True, False])),
)  # fmt: skip
def test_param_counts_equal_the_built_model(arch, pos, mlp, norm, bias, tie):
    cfg = ModelConfig(
        arch=arch, vocab_size=97, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
        pos=pos, mlp=mlp, norm=norm, bias=bias, tie_embeddings=tie, qk_norm=bias, qkv_bias=not bias,
    )  # fmt: skip
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(param_counts(cfg).values()) == sum(p.numel() for p in model.parameters())


def test_rope_table_term_matches_the_buffers():
    cfg = ModelConfig(vocab_size=97, block_size=1000, n_layer=1, n_head=2, n_embd=32)
    with torch.device("meta"):
        model = build_model(cfg)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    (table,) = [t for t in estimate(cfg, 1) if "RoPE" in t.what]
    assert buffers <= table.bytes <= 4 * buffers  # the fp32 tables plus their float64 intermediates


@pytest.mark.parametrize(
    "change, key",
    [
        ({"block_size": 100_000_000}, "model.block_size"),
        ({"n_layer": 100_000}, "model.n_layer"),
        ({"n_embd": 65536, "n_head": 256}, "model.n_embd"),
        ({"vocab_size": 100_000_000}, "model.vocab_size"),
        ({"pos": "alibi", "block_size": 40_000}, "model.block_size"),
    ],
)
def test_a_run_that_cannot_fit_is_refused_naming_the_key(four_gib, change, key):
    cfg = ModelConfig(**{"vocab_size": 4096, **change})
    with pytest.raises(ConfigError, match="GiB is free") as e:
        check_fits(cfg, 16)
    assert e.value.key == key


def test_batch_size_and_ranks_count(four_gib):
    cfg = ModelConfig(vocab_size=4096)
    check_fits(cfg, 16)
    with pytest.raises(ConfigError) as e:
        check_fits(cfg, 100_000)
    assert e.value.key == "batch_size"
    one = sum(t.bytes for t in estimate(cfg, 16))
    with pytest.raises(ConfigError, match="ranks, one copy each"):
        check_fits(cfg, 16, ranks=4 * GiB // one + 1)


def test_on_a_gpu_only_the_host_built_weights_count(four_gib):
    cfg = ModelConfig(vocab_size=4096, block_size=1_000_000)  # activations far past 4 GiB, tables not
    with pytest.raises(ConfigError):
        check_fits(cfg, 16)
    check_fits(cfg, 16, on_host=False)


def test_the_limit_variable_overrides_and_zero_turns_the_check_off(monkeypatch):
    cfg = ModelConfig(vocab_size=4096)
    monkeypatch.setenv(LIMIT_ENV, "1M")
    with pytest.raises(ConfigError, match=f"free \\({LIMIT_ENV}\\)"):
        check_fits(cfg, 16)
    monkeypatch.setenv(LIMIT_ENV, "64G")
    check_fits(cfg, 16)
    monkeypatch.setenv(LIMIT_ENV, "0")
    check_fits(ModelConfig(vocab_size=4096, block_size=10**9), 16)
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ConfigError) as e:
        check_fits(cfg, 16)
    assert e.value.key == LIMIT_ENV


def test_available_memory_is_read(monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    found, source = memory.available_bytes()
    assert found is None or found > 0 and source


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_no_shipped_recipe_is_refused_with_4_gib(four_gib, recipe, tmp_path):
    from lmforge.stages import pretrain
    from lmforge.stages.run import plan

    if recipe.stem == "eval-fewshot":
        pytest.skip("an add-on to a finished demo run: no model of its own")
    steps = plan(load_yaml(recipe), {}, tmp_path)
    vocab = next((s.config.vocab_size for s in steps if s.kind == "tokenizer"), 32768)
    for cfg in [s.config for s in steps if s.kind == "pretrain"]:
        check_fits(pretrain.model_config(cfg, vocab), cfg.batch_size, ranks=pretrain.most_ranks(cfg))
