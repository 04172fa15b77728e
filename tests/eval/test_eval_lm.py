"""Tests for lmforge.eval.lm: loss / perplexity / bpb against hand computations, windowing, unigram baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lmforge.eval import evaluate_lm, unigram_entropy
from lmforge.eval.lm import _counts


class FixedLogits(nn.Module):
    """Predicts the same logits at every position, whatever the input; records what it saw."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.inputs: list[torch.Tensor] = []
        self.modes: list[tuple[bool, bool]] = []  # (training, grad enabled) at each call

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.inputs.append(idx.clone())
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.logits.expand(idx.shape[0], idx.shape[1], -1)


class Bigram(nn.Module):
    """Embedding straight to logits: a real (input-dependent) tiny model."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


# Probabilities 1/6, 2/6, 3/6 for tokens 0, 1, 2; token 0 is a zero-byte special token.
PROBS_LOGITS = [math.log(1), math.log(2), math.log(3)]
STREAM = np.array([0, 1, 2, 2, 1, 0, 2], dtype=np.uint16)  # targets: 1 2 2 1 0 2
TOKEN_BYTES = np.array([0, 1, 2])


def test_fixed_logits_match_hand_computation():
    # -ln p: token 1 -> ln 3, token 2 -> ln 2, token 0 -> ln 6
    all_nats = 2 * math.log(3) + 3 * math.log(2) + math.log(6)
    text_nats = 2 * math.log(3) + 3 * math.log(2)  # target 0 has no bytes: out of bpb
    text_bytes = 2 * 1 + 3 * 2
    out = evaluate_lm(FixedLogits(PROBS_LOGITS), STREAM, block_size=4, batch_size=2, token_bytes=TOKEN_BYTES)
    assert out["tokens"] == 6
    assert out["bytes"] == text_bytes
    assert out["loss"] == pytest.approx(all_nats / 6, rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(all_nats / 6), rel=1e-6)
    assert out["bpb"] == pytest.approx(text_nats / (math.log(2) * text_bytes), rel=1e-6)


def test_uniform_model_loss_is_log_vocab():
    vocab = 7
    tokens = np.array([3, 1, 4, 1, 5, 0, 2, 6, 5, 3, 5], dtype=np.int64)
    token_bytes = np.array([0, 1, 1, 2, 3, 1, 4])
    out = evaluate_lm(FixedLogits([0.0] * vocab), tokens, block_size=3, batch_size=2, token_bytes=token_bytes)
    targets = tokens[1:]
    text_targets = targets[token_bytes[targets] > 0]
    assert out["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert out["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert out["bytes"] == int(token_bytes[targets].sum())
    assert out["bpb"] == pytest.approx(
        len(text_targets) * math.log(vocab) / (math.log(2) * token_bytes[targets].sum()), rel=1e-6
    )


@pytest.mark.parametrize("n_tokens, block_size, batch_size", [(11, 4, 2), (11, 5, 1), (9, 4, 3), (5, 10, 4)])
def test_windows_cover_every_target_once(n_tokens, block_size, batch_size):
    model = FixedLogits([0.0] * 32)
    tokens = np.arange(n_tokens)
    out = evaluate_lm(
        model, tokens, block_size=block_size, batch_size=batch_size, token_bytes=np.ones(32, int)
    )
    windows = [row for batch in model.inputs for row in batch.tolist()]
    assert all(len(w) <= block_size for w in windows)
    # Inputs are tokens[0 : n-1] in order, each once; targets are the inputs shifted by one.
    assert [t for w in windows for t in w] == list(range(n_tokens - 1))
    assert out["tokens"] == n_tokens - 1
    assert max(len(b) for b in model.inputs) <= batch_size


def test_result_independent_of_block_and_batch_for_position_free_model():
    results = [
        evaluate_lm(FixedLogits(PROBS_LOGITS), STREAM, block_size=t, batch_size=b, token_bytes=TOKEN_BYTES)
        for t, b in [(1, 1), (2, 3), (6, 1), (100, 8)]
    ]
    for other in results[1:]:
        assert other == pytest.approx(results[0], rel=1e-9)


def test_bigram_matches_direct_cross_entropy():
    vocab = 11
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=50)
    token_bytes = rng.integers(0, 4, size=vocab)
    model = Bigram(vocab)
    out = evaluate_lm(model, tokens, block_size=8, batch_size=3, token_bytes=token_bytes)
    with (
        torch.no_grad()
    ):  # a bigram's prediction depends only on the previous token: score the stream at once
        nats = nn.functional.cross_entropy(
            model(torch.tensor(tokens[:-1])[None])[0], torch.tensor(tokens[1:]), reduction="none"
        ).double()
    has_bytes = torch.tensor(token_bytes[tokens[1:]] > 0)
    assert out["loss"] == pytest.approx(nats.mean().item(), rel=1e-6)
    assert out["bpb"] == pytest.approx(
        nats[has_bytes].sum().item() / (math.log(2) * token_bytes[tokens[1:]].sum()), rel=1e-6
    )


class NeedsContext(nn.Module):
    """On the stream 0, 1, 2, ... (mod V): uniform at the first two positions of a window, then a logit
    of 10 on the true next token (input + 1 mod V) — a model that is only good with context."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        nxt = (idx + 1) % self.vocab  # [B, T]
        logits.scatter_(2, nxt[..., None], 10.0)
        logits[:, :2] = 0.0
        return logits


def test_sliding_windows_score_each_target_once_with_context():
    vocab, n = 5, 21
    tokens = np.arange(n + 1) % vocab
    token_bytes = np.ones(vocab, dtype=np.int64)
    uniform = math.log(vocab)
    confident = -math.log(math.exp(10) / (math.exp(10) + vocab - 1))
    disjoint = evaluate_lm(NeedsContext(vocab), tokens, block_size=4, batch_size=2, token_bytes=token_bytes)
    # disjoint windows of 4: targets 0-19 in five windows, 2 uniform each; target 20 alone, uniform
    assert disjoint["tokens"] == n
    assert disjoint["loss"] == pytest.approx((11 * uniform + 10 * confident) / n, rel=1e-6)
    # stride s leaves 4 - s tokens of context: with 2 or more, only the first window's first two
    # targets lack it; with stride 3, a later window's first scored target has one token (uniform)
    for stride, n_uniform in ((1, 2), (2, 2), (3, 2 + 5)):
        out = evaluate_lm(
            NeedsContext(vocab), tokens, block_size=4, batch_size=2, token_bytes=token_bytes, stride=stride
        )
        assert out["tokens"] == n and out["bytes"] == n  # every target counted once
        assert out["loss"] == pytest.approx((n_uniform * uniform + (n - n_uniform) * confident) / n, rel=1e-6)
    same = evaluate_lm(
        NeedsContext(vocab), tokens, block_size=4, batch_size=2, token_bytes=token_bytes, stride=4
    )
    assert same == disjoint


def test_sliding_windows_do_not_change_a_context_free_model():
    vocab = 11
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab, size=60)
    token_bytes = rng.integers(1, 4, size=vocab)
    ref = evaluate_lm(Bigram(vocab), tokens, block_size=8, batch_size=3, token_bytes=token_bytes)
    for stride in (1, 3, 5, 8):
        out = evaluate_lm(
            Bigram(vocab), tokens, block_size=8, batch_size=3, token_bytes=token_bytes, stride=stride
        )
        assert out == pytest.approx(ref, rel=1e-9)


def test_stride_is_checked():
    with pytest.raises(ValueError, match="stride"):
        evaluate_lm(Bigram(3), STREAM, block_size=4, batch_size=1, token_bytes=TOKEN_BYTES, stride=5)
    with pytest.raises(ValueError, match="stride"):
        evaluate_lm(Bigram(3), STREAM, block_size=4, batch_size=1, token_bytes=TOKEN_BYTES, stride=0)


def test_max_tokens_limits_scored_targets():
    model = FixedLogits(PROBS_LOGITS)
    out = evaluate_lm(model, STREAM, block_size=2, batch_size=1, token_bytes=TOKEN_BYTES, max_tokens=3)
    assert out["tokens"] == 3
    assert [t for b in model.inputs for t in b.flatten().tolist()] == STREAM[:3].tolist()
    truncated = evaluate_lm(
        FixedLogits(PROBS_LOGITS), STREAM[:4], block_size=2, batch_size=1, token_bytes=TOKEN_BYTES
    )
    assert out == pytest.approx(truncated)
    # Larger than the stream: everything is scored.
    everything = evaluate_lm(
        model, STREAM, block_size=2, batch_size=1, token_bytes=TOKEN_BYTES, max_tokens=999
    )
    assert everything["tokens"] == len(STREAM) - 1


def test_eval_mode_and_no_grad_during_call_and_mode_restored():
    model = FixedLogits(PROBS_LOGITS)
    model.train()
    evaluate_lm(model, STREAM, block_size=4, batch_size=1, token_bytes=TOKEN_BYTES)
    assert model.modes and all(mode == (False, False) for mode in model.modes)
    assert model.training
    model.eval()
    evaluate_lm(model, STREAM, block_size=4, batch_size=1, token_bytes=TOKEN_BYTES)
    assert not model.training


def test_bpb_is_nan_when_no_target_has_bytes():
    out = evaluate_lm(
        FixedLogits(PROBS_LOGITS), np.array([1, 0, 0]), block_size=4, batch_size=1, token_bytes=TOKEN_BYTES
    )
    assert out["bytes"] == 0 and math.isnan(out["bpb"])
    assert out["loss"] == pytest.approx(math.log(6), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tokens": np.zeros((2, 3), int)}, "1-D"),
        ({"tokens": np.array([1])}, "at least 2"),
        ({"tokens": np.array([0.5, 1.0])}, "integer"),
        ({"block_size": 0}, "block_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tokens": np.array([0, 1, 3])}, r"\[0, 3\)"),
        ({"token_bytes": np.array([0, 1, 2, 3])[:, None]}, "token_bytes"),
        ({"token_bytes": np.array([0, -1, 2])}, "token_bytes"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    args = {"tokens": STREAM, "block_size": 4, "batch_size": 1, "token_bytes": TOKEN_BYTES} | kwargs
    tokens = args.pop("tokens")
    with pytest.raises(ValueError, match=match):
        evaluate_lm(FixedLogits(PROBS_LOGITS), tokens, **args)


def test_token_outside_model_vocab_raises():
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate_lm(FixedLogits([0.0, 0.0]), STREAM, block_size=4, batch_size=1, token_bytes=TOKEN_BYTES)


def test_unigram_entropy_hand_case():
    # train counts [2, 1, 0] -> add-one p = [3/6, 2/6, 1/6]; val [0, 2] -> (ln 2 + ln 6) / 2
    value = unigram_entropy(np.array([0, 0, 1]), np.array([0, 2]), vocab_size=3)
    assert value == pytest.approx((math.log(2) + math.log(6)) / 2, rel=1e-12)


def test_unigram_entropy_uniform_and_dtype():
    # Empty train: smoothing alone -> uniform -> ln V whatever val is.
    assert unigram_entropy(np.array([], np.uint16), np.array([4, 4, 1], np.uint16), 5) == pytest.approx(
        math.log(5)
    )
    train = np.array([1, 1, 1, 2], np.uint32)
    assert unigram_entropy(train, np.array([1]), 3) == pytest.approx(-math.log(4 / 7))


@pytest.mark.parametrize(
    "train, val, vocab, match",
    [
        (np.array([0, 3]), np.array([0]), 3, "train_tokens"),
        (np.array([0]), np.array([-1]), 3, "val_tokens"),
        (np.array([0]), np.array([], int), 3, "empty"),
        (np.array([0]), np.array([0]), 0, "vocab_size"),
    ],
)
def test_unigram_entropy_bad_inputs(train, val, vocab, match):
    with pytest.raises(ValueError, match=match):
        unigram_entropy(train, val, vocab)


def test_unigram_counts_in_chunks_match_bincount_and_formula():
    rng = np.random.default_rng(1)
    train, val = rng.integers(0, 20, 1000).astype(np.uint16), rng.integers(0, 20, 300)
    assert np.array_equal(_counts(train, 20, "train_tokens", chunk=7), np.bincount(train, minlength=20))
    freq = np.bincount(train, minlength=20) + 1.0
    expected = -np.mean(np.log(freq / freq.sum())[val])
    assert unigram_entropy(train, val, 20) == pytest.approx(expected, rel=1e-12)
