"""Tests for lmforge.model.decoder: causality, init loss, learning, GQA, sizes and FLOPs, bad input."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.model.config import POS_CHOICES, ModelConfig
from lmforge.model.decoder import Decoder, alibi_slopes, count_params

VOCAB = 64


def tiny(**overrides) -> ModelConfig:
    """A model small enough to train in milliseconds per step."""
    base = {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32}
    return ModelConfig(**{**base, **overrides})


def build(cfg: ModelConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(cfg).eval()


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_causality(pos: str) -> None:
    """Changing token t must leave logits before t untouched and change every logit from t on."""
    model = build(tiny(pos=pos, n_kv_head=2, qk_norm=True))
    torch.manual_seed(1)
    idx = torch.randint(0, VOCAB, (2, 16))
    t = 9
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    # identical prefixes; 1e-4 allows for kernel-level float reordering under load (seen: 9.5e-6)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-4)
    assert (a[:, t] - b[:, t]).abs().amax() > 1e-3  # the changed token itself
    assert (a[:, t + 1 :] != b[:, t + 1 :]).any(dim=-1).all()  # later positions attend to it


@pytest.mark.parametrize(("pos", "tie"), [(p, True) for p in POS_CHOICES] + [("rope", False)])
def test_init_loss_is_uniform(pos: str, tie: bool) -> None:
    cfg = tiny(vocab_size=256, n_embd=64, pos=pos, tie_embeddings=tie, block_size=32)
    model = build(cfg)
    idx = torch.randint(0, 256, (4, 32))
    with torch.no_grad():
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, dims=1).flatten())
    assert abs(loss.item() - math.log(256)) < 0.3


VARIANTS = list(itertools.product(POS_CHOICES, ("rmsnorm", "layernorm"), ("swiglu", "gelu", "relu2")))


@pytest.mark.parametrize(("pos", "norm", "mlp"), VARIANTS)
def test_every_variant_overfits_one_batch(pos: str, norm: str, mlp: str) -> None:
    model = build(tiny(pos=pos, norm=norm, mlp=mlp)).train()
    torch.manual_seed(2)
    data = torch.randint(0, VOCAB, (4, 17))
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_every_parameter_gets_a_gradient() -> None:
    model = build(
        tiny(bias=True, qk_norm=True, norm="layernorm", pos="learned", tie_embeddings=False)
    ).train()
    idx = torch.randint(0, VOCAB, (2, 16))
    model(idx).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_module_names_and_tying() -> None:
    model = build(tiny(mlp="swiglu", pos="learned"))
    names = {n for n, _ in model.named_parameters()}
    for expected in (
        "tok_emb.weight",
        "pos_emb.weight",
        "blocks.0.attn_norm.weight",
        "blocks.0.attn.q_proj.weight",
        "blocks.0.attn.k_proj.weight",
        "blocks.0.attn.v_proj.weight",
        "blocks.0.attn.o_proj.weight",
        "blocks.0.mlp_norm.weight",
        "blocks.0.mlp.gate_proj.weight",
        "blocks.0.mlp.up_proj.weight",
        "blocks.0.mlp.down_proj.weight",
        "norm.weight",
    ):
        assert expected in names, expected
    assert model.lm_head.weight is model.tok_emb.weight
    untied = build(tiny(tie_embeddings=False, mlp="gelu"))
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.blocks[0].mlp.gate_proj is None
    # fixed tables are buffers that never reach the state dict
    assert not any("rope" in k for k in build(tiny(pos="rope")).state_dict())


def test_init_weights_follows_its_docstring() -> None:
    cfg = tiny(n_layer=8, n_embd=128, mlp="gelu", bias=True, norm="layernorm", tie_embeddings=False)
    model = build(cfg)
    block = model.blocks[0]
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.002
    assert abs(model.lm_head.weight.std().item() - 0.02) < 0.002
    assert abs(block.attn.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.down_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(block.attn.o_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert torch.all(block.attn.q_proj.bias == 0) and torch.all(block.mlp_norm.bias == 0)
    assert torch.all(block.attn_norm.weight == 1) and torch.all(model.norm.weight == 1)


def _gqa_as_mha(gqa: Decoder) -> Decoder:
    """The equivalent full multi-head model: each key/value head copied for every query head it serves."""
    cfg = gqa.config
    mha = Decoder(dataclasses.replace(cfg, n_kv_head=0)).eval()
    state = gqa.state_dict()
    group = cfg.n_head // cfg.kv_heads
    for i in range(cfg.n_layer):
        for proj in ("k_proj", "v_proj"):
            key = f"blocks.{i}.attn.{proj}.weight"
            w = state[key].view(cfg.kv_heads, cfg.head_dim, cfg.n_embd)  # [K, Q, D]
            state[key] = w.repeat_interleave(group, dim=0).reshape(cfg.n_head * cfg.head_dim, cfg.n_embd)
    mha.load_state_dict(state)
    return mha


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_gqa_equals_mha_with_repeated_kv_heads(pos: str) -> None:
    gqa = build(tiny(pos=pos, n_head=4, n_kv_head=2))
    assert gqa.blocks[0].attn.k_proj.weight.shape == (2 * 8, 32)
    assert gqa.blocks[0].attn.q_proj.weight.shape == (4 * 8, 32)
    mha = _gqa_as_mha(gqa)
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(gqa(idx), mha(idx), rtol=0, atol=1e-5)


def test_alibi_slopes_follow_press_et_al() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 6 heads: the 4-head slopes, then every other slope of the 8-head sequence
    expected = [2.0 ** (-2 * (i + 1)) for i in range(4)] + [2.0**-1, 2.0**-3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected))


def test_param_count_and_flops_by_hand() -> None:
    # V=64, D=32, L=2, H=4 (Q=8), swiglu hidden = ceil64(8*32//3 = 85) = 128, rmsnorm, no bias, tied.
    model = build(tiny())
    per_layer = 4 * 32 * 32 + 3 * 32 * 128 + 2 * 32  # attention + mlp + two norms
    non_embedding = 2 * per_layer + 32  # + final norm
    assert model.num_params() == non_embedding == count_params(model)
    assert model.num_params(non_embedding=False) == non_embedding + 64 * 32  # tied table counted once
    assert model.flops_per_token() == 6 * (non_embedding + 64 * 32) + 12 * 2 * 4 * 8 * 16
    learned_untied = build(tiny(pos="learned", tie_embeddings=False))
    # position and token tables excluded; the untied head is a matmul and counts
    assert learned_untied.num_params() == non_embedding + 64 * 32
    assert learned_untied.num_params(non_embedding=False) == non_embedding + 2 * 64 * 32 + 16 * 32


def test_vocab_size_zero_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Decoder(tiny(vocab_size=0))
    assert info.value.key == "vocab_size"
    with pytest.raises(ConfigError) as info:
        Decoder(tiny(n_embd=100, n_head=3))
    assert info.value.key == "n_embd"


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_sequence_longer_than_block_size_is_refused(pos: str) -> None:
    model = build(tiny(pos=pos))
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, T\] integer"):
        model(torch.zeros(16, dtype=torch.long))
