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
from lmforge.model.decoder import Decoder, alibi_slopes, apply_rope, count_params

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


# --- the eager fast paths (fused projections, hand-written backwards) against the plain math -----------


def plain_forward(model: Decoder, idx: torch.Tensor) -> torch.Tensor:
    """The decoder's math written out plainly: separate projections, half-split RoPE, composite ops."""
    cfg = model.config
    B, T = idx.shape
    H, K, Q = cfg.n_head, cfg.kv_heads, cfg.head_dim
    x = model.tok_emb(idx)
    if cfg.pos == "learned":
        x = x + model.pos_emb.weight[:T]
    elif cfg.pos == "sinusoidal":
        x = x + model.pos_table[:T]
    mask, is_causal = model._attention_mask(0, T, x.dtype, x.device)

    def norm(module: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        if isinstance(module, torch.nn.RMSNorm):
            return F.rms_norm(h, module.normalized_shape, module.weight, module.eps)
        return module(h)

    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        h = norm(block.attn_norm, x)
        q = attn.q_proj(h).view(B, T, H, Q).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, K, Q).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, K, Q).transpose(1, 2)
        if cfg.qk_norm:
            q, k = norm(attn.q_norm, q), norm(attn.k_norm, k)
        if cfg.pos == "rope":
            q, k = (
                apply_rope(q, model.rope_cos[:T], model.rope_sin[:T]),
                apply_rope(k, model.rope_cos[:T], model.rope_sin[:T]),
            )
        k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, H * Q))
        h = norm(block.mlp_norm, x)
        if cfg.mlp == "swiglu":
            h = F.silu(mlp.gate_proj(h)) * mlp.up_proj(h)
        else:
            h = F.gelu(mlp.up_proj(h)) if cfg.mlp == "gelu" else F.relu(mlp.up_proj(h)).square()
        x = x + mlp.down_proj(h)
    return model.lm_head(norm(model.norm, x))


FAST_PATH_CASES = [
    {},
    {"n_kv_head": 2, "qk_norm": True, "bias": True},
    {"n_kv_head": 1, "tie_embeddings": False},
    {"pos": "alibi", "norm": "layernorm", "mlp": "gelu", "bias": True},
    {"pos": "learned", "mlp": "relu2", "n_kv_head": 2},
    {"pos": "sinusoidal", "qk_norm": True},
]


@pytest.mark.parametrize(
    "overrides", FAST_PATH_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_fast_paths_equal_the_plain_math(overrides: dict) -> None:
    """Logits and every gradient of the training forward equal the plainly written model's."""
    model = build(tiny(**overrides)).train()
    with torch.no_grad():  # move the gains and biases off their init so every term is exercised
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, VOCAB, (3, 16))
    weights = torch.randn(3, 16, VOCAB)
    fast = model(idx)
    (fast * weights).sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = plain_forward(model, idx)
    (plain * weights).sum().backward()
    torch.testing.assert_close(fast, plain, rtol=0, atol=2e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-4, atol=2e-5, msg=name)


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_dropout_trains_on_the_fast_path(pos: str) -> None:
    """With dropout the attention kernel hands back gradients in other layouts; training still works."""
    model = build(tiny(pos=pos, dropout=0.1, n_kv_head=2)).train()
    idx = torch.randint(0, VOCAB, (2, 16))
    model(idx).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_wrapped_projections_take_the_plain_path() -> None:
    """A projection that is not a plain nn.Linear (as LoRA makes it) is called, not bypassed."""

    class Scaled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = build(tiny())
    idx = torch.randint(0, VOCAB, (2, 16))
    before = model(idx)
    for block in model.blocks:
        for parent, name in ((block.attn, "q_proj"), (block.mlp, "up_proj"), (block.attn, "o_proj")):
            old = getattr(parent, name)
            new = Scaled(old.in_features, old.out_features, bias=old.bias is not None)
            new.load_state_dict(old.state_dict())
            setattr(parent, name, new)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), plain_forward(model, idx), rtol=0, atol=2e-5)
    assert (model(idx) - before).abs().amax() > 1e-3


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_bf16_autocast_stays_close_to_fp32(pos: str) -> None:
    """Under CPU bf16 autocast (attention then runs in fp32) logits and gradients track the fp32 model."""
    model = build(tiny(pos=pos, n_embd=64)).train()
    idx = torch.randint(0, VOCAB, (4, 16))
    ref = model(idx)
    ref.logsumexp(-1).sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx)
    assert low.dtype == torch.bfloat16
    low.float().logsumexp(-1).sum().backward()
    assert (low.float() - ref).abs().amax() < 0.05
    for p, g in zip(model.parameters(), ref_grads):
        assert (p.grad - g).norm() <= 0.05 * g.norm() + 1e-6


def hf_llama_key(key: str) -> str:
    """The Hugging Face Llama name of one of our state-dict keys."""
    parts = key.split(".")
    if parts[0] == "blocks":
        renamed = {
            "attn_norm": "input_layernorm",
            "mlp_norm": "post_attention_layernorm",
            "attn": "self_attn",
        }
        return ".".join(["model", "layers", parts[1], *(renamed.get(p, p) for p in parts[2:])])
    top = {"tok_emb": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
    return ".".join([top[parts[0]], *parts[1:]])


@pytest.mark.slow
def test_logits_and_gradients_match_hf_llama() -> None:
    """The default architecture is Llama: same logits and gradients as transformers' LlamaForCausalLM."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny(n_kv_head=2, mlp_hidden=96)
    model = build(cfg).train()
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=cfg.n_embd,
            intermediate_size=cfg.hidden_dim,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.block_size,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
        )
    ).train()
    hf.load_state_dict({hf_llama_key(k): v for k, v in model.state_dict().items()})
    idx = torch.randint(0, VOCAB, (2, 16))
    ours, theirs = model(idx), hf(input_ids=idx).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    ours.logsumexp(-1).sum().backward()
    theirs.logsumexp(-1).sum().backward()
    hf_params = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hf_params[hf_llama_key(name)].grad, rtol=1e-4, atol=2e-5, msg=name)
