"""Judging by text: a reward model with its own tokenizer scores a decoder's replies, and ``WinRate``
compares a policy with its starting model (0.5 and KL 0 before any change)."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.training import judge
from lmforge.training.logprobs import Reference, encode_response
from lmforge.training.reward_model import RewardModel


@pytest.fixture(scope="module")
def models():
    """``(policy tokenizer, policy, reward-model tokenizer, reward model)`` with different vocabularies."""
    from lmforge.model.checkpoint import build_model
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import train_bpe

    rng = random.Random(0)
    words = "good great fine nice bad awful poor ugly the a is say reply".split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]
    tok_p, tok_r = train_bpe(texts, vocab_size=300), train_bpe(texts, vocab_size=280)
    assert tok_p.get_vocab_size() != tok_r.get_vocab_size()
    torch.manual_seed(0)
    policy = build_model(
        ModelConfig(vocab_size=tok_p.get_vocab_size(), block_size=48, n_layer=1, n_head=2, n_embd=32)
    )
    trunk = build_model(
        ModelConfig(vocab_size=tok_r.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=32)
    )
    return tok_p, policy, tok_r, RewardModel(trunk).eval()


def test_text_scorer_renders_as_the_reward_stage_encodes(models):
    from lmforge.tokenizer.texts import pad_batch
    from lmforge.tokenizer.train import special_id

    _, _, tok_r, rm = models
    scorer = judge.TextScorer(rm, tok_r, max_len=24)
    prompts = [[{"role": "user", "content": "say good"}], [{"role": "user", "content": "reply " * 30}]]
    replies = ["great fine", "awful"]
    rows = [encode_response(tok_r, p, r, 23)[0] for p, r in zip(prompts, replies)]
    assert max(map(len, rows)) == 24  # the long prompt is cut from the left, as the reward stage cuts
    idx, mask = pad_batch(rows, special_id(tok_r, "pad"))
    with torch.no_grad():
        expected = rm(idx, mask)
    assert torch.allclose(scorer(prompts, replies), expected, atol=1e-6)
    with pytest.raises(ValueError, match="2 prompts for 1 replies"):
        scorer(prompts, replies[:1])


def test_win_rate_is_a_half_at_the_start_and_moves_with_the_policy(models):
    """Before any change every reply ties (0.5, KL 0); a policy whose replies differ is judged per prompt, the
    second judge reported under its own name."""
    import copy

    tok_p, policy, tok_r, rm = models
    prompts = [[{"role": "user", "content": w}] for w in ("say good", "say bad", "reply", "the a")]

    def longer(ps, replies):  # a rule: longer replies score higher
        return torch.tensor([float(len(r)) for r in replies])

    judges = {"reward": judge.TextScorer(rm, tok_r, 64), "length": longer}
    win = judge.WinRate(policy, tok_p, prompts, judges, max_new_tokens=6, seed=3)
    ref = Reference(policy)
    start = win(policy, ref)
    assert start["win_rate"] == 0.5 and start["length_win_rate"] == 0.5
    assert start["kl"] == pytest.approx(0.0, abs=1e-5)
    assert start["policy_score"] == pytest.approx(start["base_score"])
    moved = copy.deepcopy(policy)
    with torch.no_grad():
        moved.lm_head.weight.add_(torch.randn_like(moved.lm_head.weight))
    after = win(moved, ref)
    texts = win.replies(moved)[0]
    by_hand = sum((len(t) > len(b)) + 0.5 * (len(t) == len(b)) for t, b in zip(texts, win.base_replies)) / 4
    assert after["length_win_rate"] == pytest.approx(by_hand)
    assert after["kl"] > 0.1
