"""Tests for lmforge.inference.sampling.sample: greedy, top-k, top-p, seeding, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.inference import sample


def sample_next(logits: torch.Tensor, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
    """``sample`` with one generator for every row (drawn from row by row)."""
    return sample(logits, generators=None if generator is None else [generator] * len(logits), **kwargs)


def _logits(batch: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _draws(logits: torch.Tensor, n: int = 300, **kwargs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return torch.stack([sample_next(logits, generator=gen, **kwargs) for _ in range(n)])  # [n, B]


def test_temperature_zero_is_argmax():
    logits = _logits()
    out = sample_next(logits, temperature=0)
    assert out.dtype == torch.long and out.shape == (4,)
    assert torch.equal(out, logits.argmax(dim=-1))
    assert torch.equal(sample_next(logits, temperature=0.0, top_k=5, top_p=0.5), logits.argmax(dim=-1))


def test_top_k_one_is_greedy_at_any_temperature():
    logits = _logits()
    draws = _draws(logits, n=50, temperature=5.0, top_k=1)
    assert torch.equal(draws, logits.argmax(dim=-1).expand_as(draws))


def test_top_k_keeps_only_the_k_largest():
    logits = _logits(vocab=30)
    draws = _draws(logits, temperature=3.0, top_k=3)
    allowed = torch.topk(logits, 3, dim=-1).indices  # [B, 3]
    for row in range(logits.shape[0]):
        assert set(draws[:, row].tolist()) <= set(allowed[row].tolist())
    assert len(set(draws[:, 0].tolist())) > 1  # it still samples


def test_top_k_larger_than_vocab_keeps_everything():
    logits = torch.zeros(1, 4)
    draws = _draws(logits, n=200, top_k=100)
    assert set(draws.flatten().tolist()) == {0, 1, 2, 3}


def test_small_top_p_keeps_only_the_top_token():
    logits = _logits()
    draws = _draws(logits, n=50, temperature=10.0, top_p=1e-6)
    assert torch.equal(draws, logits.argmax(dim=-1).expand_as(draws))


def test_a_top_p_below_float32s_range_is_greedy_not_an_error():
    """5e-324 (found by the server's schemathesis fuzz) rounds to 0 in fp32, so every token compared as
    outside the nucleus and the all -inf row made multinomial raise (a 500 from the server)."""
    logits = _logits()
    draws = _draws(logits, n=20, top_p=5e-324)
    assert torch.equal(draws, logits.argmax(dim=-1).expand_as(draws))


def test_top_p_keeps_the_smallest_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 needs tokens {0, 1}; top_p 0.85 needs {0, 1, 2}
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert set(_draws(logits, top_p=0.7).flatten().tolist()) == {0, 1}
    assert set(_draws(logits, top_p=0.85).flatten().tolist()) == {0, 1, 2}
    assert set(_draws(logits, n=600, top_p=1.0).flatten().tolist()) == {0, 1, 2, 3}


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[0.7, 0.2, 0.1]]).log()
    draws = _draws(logits, n=4000).flatten()
    freq = torch.bincount(draws, minlength=3).double() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.double), atol=0.03)


def test_same_seed_same_draws_other_seed_other_draws():
    logits = torch.zeros(16, 1000)

    def draw(seed: int) -> torch.Tensor:
        return sample_next(logits, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_neg_inf_logits_are_never_sampled():
    logits = torch.tensor([[-math.inf, 0.0, -math.inf, 0.0]])
    assert set(_draws(logits, n=200).flatten().tolist()) == {1, 3}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.2}, "top_p"),
    ],
)
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_next(_logits(), **kwargs)


@pytest.mark.parametrize(
    "logits", [torch.zeros(5), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 0)]
)
def test_bad_logits_raise(logits):
    with pytest.raises(ValueError, match="logits"):
        sample_next(logits)


def test_a_rows_draw_depends_only_on_its_own_generator():
    """Row b draws from ``generators[b]`` alone: the same row sampled next to other rows, or alone,
    with the same seed gives the same token (what makes engine and scheduler agree)."""
    logits = _logits(batch=6, vocab=200)
    gens = [torch.Generator().manual_seed(40 + b) for b in range(6)]
    together = sample(logits, temperature=1.5, top_p=0.95, generators=gens)
    alone = [
        sample(
            logits[b : b + 1], temperature=1.5, top_p=0.95, generators=[torch.Generator().manual_seed(40 + b)]
        )
        for b in range(6)
    ]
    assert together.tolist() == [int(t) for t in alone]
    assert len(set(together.tolist())) > 1
    with pytest.raises(ValueError, match="generators"):
        sample(logits, generators=gens[:2])
