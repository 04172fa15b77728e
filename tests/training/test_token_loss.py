"""Tests for lmforge.training.step: the token-weighted loss, the one training step every loop runs (its
micro-batch x accumulation invariance, clipping, L1, the schedule's lr, the non-finite check) and early stopping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.training.step import (
    EarlyStopping,
    StepStats,
    supervised_tokens,
    token_loss,
    train_step,
    weighted_backward,
)

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


def _parts(micro: int) -> list[tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], int]]:
    """The batch as ``train_step`` micro-batches of ``micro`` rows: ``((idx, targets, mask), n)``."""
    idx, targets, mask = _batch()
    return [
        ((idx[i : i + micro], targets[i : i + micro], mask[i : i + micro]), int(mask[i : i + micro].sum()))
        for i in range(0, 4, micro)
    ]


def _step(model: Decoder, micro: int, **kw) -> tuple[StepStats, dict[str, torch.Tensor]]:
    """One ``train_step`` with plain SGD (lr 1: the update is minus the gradient); the weights after it."""
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = train_step(
        model, [sgd], _parts(micro), lambda b: token_loss(model(b[0]), b[1], b[2])[0], lr=1.0, **kw
    )
    return stats, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_accumulation_split_does_not_change_the_step() -> None:
    """The invariance guards the step every loop runs: 1 x 4, 2 x 2 and 4 x 1 rows give one update, the
    gradient of the mean over the batch's supervised tokens."""
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx, targets, mask = _batch()
    F.cross_entropy(model(idx).flatten(0, 1), targets.masked_fill(~mask, -100).flatten()).backward()
    reference = {n: before[n] - p.grad for n, p in model.named_parameters()}  # mean over supervised tokens
    for micro in (4, 2, 1):
        model = _model()
        stats, after = _step(model, micro)
        assert stats.tokens == 23 and stats.lr == 1.0
        for name in after:
            torch.testing.assert_close(after[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_averaging_micro_batch_means_would_break_invariance() -> None:
    """Shows the invariance test can fail: the naive rule gives different gradients on this batch."""
    grads = []
    for micro in (4, 1):
        model = _model()
        parts = _parts(micro)
        for (x, y, m), n in parts:  # the common bug: average the per-micro-batch means
            loss_sum, _ = token_loss(model(x), y, m)
            (loss_sum / n / len(parts)).backward()
        grads.append(model.tok_emb.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def test_train_step_returns_the_token_mean() -> None:
    model = _model()
    idx, targets, mask = _batch()
    with torch.no_grad():
        loss_sum, n_full = token_loss(model(idx), targets, mask)
    stats, _ = _step(model, 2)
    assert stats.tokens == n_full == supervised_tokens(targets, mask) == 23
    assert stats.loss == pytest.approx(loss_sum.item() / 23, rel=1e-5)


def test_train_step_clips_then_adds_the_l1_gradient_to_matrices_only() -> None:
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx, targets, mask = _batch()
    F.cross_entropy(model(idx).flatten(0, 1), targets.masked_fill(~mask, -100).flatten()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    model = _model()
    stats, after = _step(model, 2, grad_clip=0.1, l1=0.01)
    assert stats.grad_norm == pytest.approx(float(norm), rel=1e-4)  # measured before clipping
    for name, w in before.items():
        expected = w - grads[name] * (0.1 / (float(norm) + 1e-6))
        if w.ndim >= 2:
            expected = expected - 0.01 * torch.sign(w)
        torch.testing.assert_close(after[name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_train_step_refuses_a_non_finite_loss_and_sets_each_group_lr() -> None:
    model = _model()
    sgd = torch.optim.SGD([{"params": [model.tok_emb.weight], "lr_scale": 0.5}], lr=1.0)
    parts = _parts(4)
    train_step(model, [sgd], parts, lambda b: token_loss(model(b[0]), b[1], b[2])[0], lr=0.2, step=6)
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.1)  # the schedule's lr times the group's scale
    with pytest.raises(FloatingPointError, match="at step 8; lower the learning rate"):
        train_step(
            model, [sgd], parts, lambda b: token_loss(model(b[0]), b[1], b[2])[0] * math.nan, lr=0.2, step=7
        )


def test_early_stopping_counts_evaluations_without_improvement() -> None:
    stop = EarlyStopping("min", patience=2, min_delta=0.1, best=math.inf)
    assert stop.update(1.0) and not stop.stop
    assert not stop.update(0.95) and not stop.stop  # better, but by less than min_delta
    assert stop.update(0.8) and stop.bad == 0
    assert not stop.update(0.9) and not stop.update(0.85) and stop.stop and stop.best == 0.8
    assert not EarlyStopping("max", patience=0).stop
