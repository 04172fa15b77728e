"""Tests for lmforge.inference.generate: greedy chains, cropping, stop ids, seeding, no leaked state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.inference import generate, stream

VOCAB = 10


class Successor(nn.Module):
    """Strongly prefers token (last + 1) % VOCAB at every position; records the context lengths it saw."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.lengths: list[int] = []
        self.modes: list[tuple[bool, bool]] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.lengths.append(idx.shape[1])
        self.modes.append((self.training, torch.is_grad_enabled()))
        return nn.functional.one_hot((idx + 1) % VOCAB, VOCAB).float() * self.scale  # [B, T, V]


class FirstTokenEcho(nn.Module):
    """Always predicts the first token of its context: shows which tokens the context window holds."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(idx[:, :1].expand_as(idx), VOCAB).float() * 20


class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(VOCAB, VOCAB)
        nn.init.normal_(self.table.weight, std=0.1)  # near-uniform: sampling is really random

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


def test_greedy_follows_the_model_and_returns_new_tokens_only():
    out = generate(Successor(), [3], max_new_tokens=8, block_size=4, temperature=0)
    assert out == [4, 5, 6, 7, 8, 9, 0, 1]


def test_greedy_equals_manual_argmax_chain():
    model = Bigram()
    prompt = [1, 2]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert generate(model, prompt, max_new_tokens=6, block_size=8, temperature=0) == ids[2:]


def test_context_is_cropped_to_block_size():
    model = Successor()
    generate(model, list(range(7)), max_new_tokens=5, block_size=3, temperature=0)
    assert model.lengths == [3] * 5
    # The window slides: with block_size 2, the first token of the context is the previous-but-one id.
    assert generate(FirstTokenEcho(), [1, 2, 3], max_new_tokens=4, block_size=2, temperature=0) == [
        2,
        3,
        2,
        3,
    ]


def test_stop_id_ends_generation_and_is_not_returned():
    assert generate(Successor(), [3], max_new_tokens=20, block_size=4, temperature=0, stop_ids={6}) == [4, 5]
    assert generate(Successor(), [3], max_new_tokens=20, block_size=4, temperature=0, stop_ids={4}) == []


def test_max_new_tokens_respected():
    assert len(generate(Bigram(), [0], max_new_tokens=13, block_size=4, seed=0)) == 13
    assert generate(Bigram(), [0], max_new_tokens=0, block_size=4, seed=0) == []


def test_seed_reproduces_and_differs_across_seeds():
    model = Bigram()
    kwargs = {"max_new_tokens": 40, "block_size": 8, "temperature": 1.0}
    first = generate(model, [0], seed=11, **kwargs)
    assert generate(model, [0], seed=11, **kwargs) == first
    assert generate(model, [0], seed=12, **kwargs) != first


def test_stream_yields_the_same_tokens_as_generate():
    model = Bigram()
    kwargs = {"max_new_tokens": 15, "block_size": 4, "top_k": 5, "seed": 3}
    it = stream(model, [2], **kwargs)
    assert next(it) == generate(model, [2], **kwargs)[0]
    assert [next(it)] + list(it) == generate(model, [2], **kwargs)[1:]


def test_no_state_leaks_between_yields():
    model = Successor()
    model.train()
    it = stream(model, [0], max_new_tokens=5, block_size=4, temperature=0)
    next(it)
    assert torch.is_grad_enabled()
    assert model.training
    assert model.modes == [(False, False)]
    list(it)
    assert all(mode == (False, False) for mode in model.modes) and model.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt_ids": []}, "prompt_ids"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"block_size": 0}, "block_size"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 2.0}, "top_p"),
    ],
)
def test_invalid_args_raise_at_call_time(kwargs, match):
    args = {"prompt_ids": [1], "max_new_tokens": 3, "block_size": 4} | kwargs
    prompt = args.pop("prompt_ids")
    with pytest.raises(ValueError, match=match):
        stream(Successor(), prompt, **args)  # not iterated: the check must be eager
    with pytest.raises(ValueError, match=match):
        generate(Successor(), prompt, **args)


def test_bad_model_output_raises():
    class Flat(nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return torch.zeros(idx.shape[0], VOCAB)

    with pytest.raises(ValueError, match="logits"):
        generate(Flat(), [1], max_new_tokens=2, block_size=4)


def test_kv_cache_generation_equals_uncached_greedy():
    """The cached path (lmforge Decoder) gives the same greedy tokens as full recomputation, also past block_size."""
    from lmforge.inference.generate import _last_logits
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder

    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=16))

    class NoCache(torch.nn.Module):  # the same model without new_kv_cache: the reference path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            return self.inner(idx)

    prompt = [1, 5, 7]
    cached = generate(model, prompt, max_new_tokens=30, block_size=16, temperature=0)
    plain = generate(NoCache(model), prompt, max_new_tokens=30, block_size=16, temperature=0)
    assert cached == plain and len(cached) == 30
    assert _last_logits(model, torch.tensor([prompt])).shape == (1, 50)
