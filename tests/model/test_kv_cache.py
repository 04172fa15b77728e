"""Tests for cached decoding: prefill + one-token steps must reproduce the full forward pass exactly."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.config import POS_CHOICES, ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.model.kv_cache import KVCache

VOCAB = 64

# Each pos scheme, plus the other switches that touch attention.
CASES = [{"pos": p} for p in POS_CHOICES] + [
    {"pos": "rope", "n_kv_head": 2, "qk_norm": True},
    {"pos": "alibi", "n_kv_head": 1, "bias": True, "norm": "layernorm"},
    {"pos": "learned", "tie_embeddings": False, "mlp": "relu2", "n_head": 2, "n_kv_head": 1},
    {"pos": "sinusoidal", "n_head": 8, "n_kv_head": 2, "mlp": "gelu"},
]


def build(**overrides) -> Decoder:
    base = {"vocab_size": VOCAB, "block_size": 24, "n_layer": 2, "n_head": 4, "n_embd": 32}
    torch.manual_seed(0)
    return Decoder(ModelConfig(**{**base, **overrides})).eval()


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(overrides: dict) -> None:
    model = build(**overrides)
    idx = torch.randint(0, VOCAB, (3, 24))
    full = model(idx)
    cache = model.new_kv_cache(batch_size=3)
    pieces = [model(idx[:, :7], cache)]  # prefill
    pieces += [model(idx[:, t : t + 1], cache) for t in range(7, 20)]  # one token at a time
    pieces.append(model(idx[:, 20:], cache))  # a multi-token chunk after a prefix
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def greedy(model: Decoder, prompt: torch.Tensor, n_new: int, use_cache: bool) -> torch.Tensor:
    """Greedy continuation of ``prompt`` [B, T0], recomputing everything or decoding from the cache."""
    out = prompt
    if use_cache:
        cache = model.new_kv_cache(prompt.shape[0])
        logits = model(prompt, cache)
        for _ in range(n_new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
            out = torch.cat([out, nxt], dim=1)
            logits = model(nxt, cache)
    else:
        for _ in range(n_new):
            nxt = model(out)[:, -1].argmax(-1, keepdim=True)  # [B, 1]
            out = torch.cat([out, nxt], dim=1)
    return out


@pytest.mark.parametrize("pos", POS_CHOICES)
@torch.no_grad()
def test_greedy_decoding_with_and_without_cache_agree(pos: str) -> None:
    model = build(pos=pos, n_kv_head=2, tie_embeddings=False)
    for p in model.parameters():  # larger random weights: a varied continuation, not one repeated token
        if p.ndim == 2:
            p.normal_(0.0, 0.3)
    prompt = torch.randint(0, VOCAB, (2, 5))
    plain = greedy(model, prompt, 15, use_cache=False)
    cached = greedy(model, prompt, 15, use_cache=True)
    assert torch.equal(plain, cached)
    assert len(set(plain[0, 5:].tolist())) > 1  # not a degenerate constant continuation


@torch.no_grad()
def test_cache_refuses_overflow_and_wrong_batch() -> None:
    model = build()
    cache = model.new_kv_cache(batch_size=2, max_len=8)
    with pytest.raises(ValueError, match="built for 2"):
        model(torch.zeros(3, 4, dtype=torch.long), cache)
    model(torch.zeros(2, 6, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="exceeds max_len 8"):
        model(torch.zeros(2, 3, dtype=torch.long), cache)
    full = model.new_kv_cache(batch_size=1)
    model(torch.zeros(1, 24, dtype=torch.long), full)
    with pytest.raises(ValueError, match="exceeds block_size 24"):
        model(torch.zeros(1, 1, dtype=torch.long), full)


@torch.no_grad()
def test_reset_makes_the_cache_reusable() -> None:
    model = build()
    a, b = torch.randint(0, VOCAB, (2, 1, 10))
    cache = model.new_kv_cache(batch_size=1)
    model(a, cache)
    cache.reset()
    torch.testing.assert_close(model(b, cache), model(b), rtol=0, atol=1e-5)


def test_cache_layout() -> None:
    cache = KVCache(2, 16, n_layer=3, kv_heads=2, head_dim=8, dtype=torch.float32, device="cpu")
    assert cache.k.shape == cache.v.shape == (3, 2, 2, 16, 8)
    k = torch.ones(2, 2, 5, 8)
    keys, values = cache.update(1, k, 2 * k)
    assert keys.shape == (2, 2, 5, 8) and cache.pos == 0
    assert torch.equal(cache.v[1, :, :, :5], 2 * k) and cache.k[0].abs().sum() == 0
    with pytest.raises(ValueError, match="head_dim must be > 0"):
        KVCache(1, 4, 1, 1, 0)
