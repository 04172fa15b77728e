"""Tests for lmforge.training.step: the token-weighted loss and gradient-accumulation invariance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.training.step import accumulate_gradients, supervised_tokens, token_loss, weighted_backward

VOCAB = 32


def test_token_loss_matches_a_hand_computed_case() -> None:
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])  # [1, 3, 2]
    targets = torch.tensor([[0, 0, -100]])
    mask = torch.tensor([[True, True, True]])
    loss_sum, n = token_loss(logits, targets, mask)
    # position 0: -log(1/2); position 1: -log(e^2 / (e^2 + 1)); position 2 ignored by ignore_index
    expected = math.log(2) + math.log(1 + math.exp(-2))
    assert n == 2 and loss_sum.item() == pytest.approx(expected)
    loss_sum, n = token_loss(logits, targets, torch.tensor([[False, True, True]]))
    assert n == 1 and loss_sum.item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_token_loss_is_fp32_and_handles_nothing_supervised() -> None:
    logits = torch.randn(2, 4, VOCAB, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (2, 4))
    loss_sum, n = token_loss(logits, targets)
    assert loss_sum.dtype == torch.float32 and n == 8
    empty_sum, empty_n = token_loss(logits, targets, torch.zeros(2, 4, dtype=torch.bool))
    assert empty_n == 0 and empty_sum.item() == 0.0
    weighted_backward(empty_sum, 0)  # no division by zero, no NaN
    assert torch.isfinite(logits.grad.float()).all()


def test_token_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected logits"):
        token_loss(torch.zeros(2, 4, VOCAB), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="mask must be a bool"):
        token_loss(torch.zeros(2, 4, VOCAB), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))


def _model() -> Decoder:
    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=VOCAB, block_size=12, n_layer=2, n_head=2, n_embd=16))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four sequences whose supervised-token counts are very uneven (12, 1, 7 and 3)."""
    torch.manual_seed(1)
    idx = torch.randint(0, VOCAB, (4, 12))
    targets = torch.randint(0, VOCAB, (4, 12))
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[0, :] = True
    mask[1, 11] = True
    mask[2, 5:] = True
    mask[3, :3] = True
    return idx, targets, mask


def _grads(model: Decoder, micro: int, per_micro_mean: bool = False) -> dict[str, torch.Tensor]:
    """Gradients of one optimiser step over the batch split into micro-batches of ``micro`` rows."""
    model.zero_grad(set_to_none=True)
    idx, targets, mask = _batch()
    parts = [(idx[i : i + micro], targets[i : i + micro], mask[i : i + micro]) for i in range(0, 4, micro)]
    if per_micro_mean:  # the common bug: average the per-micro-batch means
        for x, y, m in parts:
            loss_sum, n = token_loss(model(x), y, m)
            (loss_sum / n / len(parts)).backward()
    else:
        accumulate_gradients(model, parts)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_accumulation_split_does_not_change_gradients() -> None:
    model = _model()
    idx, targets, mask = _batch()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(idx).flatten(0, 1), targets.masked_fill(~mask, -100).flatten()).backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}  # mean over supervised tokens
    one = _grads(model, micro=4)  # 1 micro-batch of 4
    for name in one:
        torch.testing.assert_close(one[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)
    for micro in (2, 1):  # 2 x 2 and 4 x 1
        other = _grads(model, micro=micro)
        for name in one:
            torch.testing.assert_close(other[name], one[name], rtol=1e-5, atol=1e-7, msg=name)


def test_averaging_micro_batch_means_would_break_invariance() -> None:
    """Shows the invariance test can fail: the naive rule gives different gradients on this batch."""
    model = _model()
    one = _grads(model, micro=4, per_micro_mean=True)
    four = _grads(model, micro=1, per_micro_mean=True)
    assert not torch.allclose(one["tok_emb.weight"], four["tok_emb.weight"], rtol=1e-3, atol=1e-6)


def test_accumulate_gradients_returns_the_token_mean() -> None:
    model = _model()
    idx, targets, mask = _batch()
    parts = [(idx[:2], targets[:2], mask[:2]), (idx[2:], targets[2:], mask[2:])]
    loss, n = accumulate_gradients(model, parts)
    with torch.no_grad():
        loss_sum, n_full = token_loss(model(idx), targets, mask)
    assert n == n_full == supervised_tokens(targets, mask) == 23
    assert loss == pytest.approx(loss_sum.item() / 23, rel=1e-5)
