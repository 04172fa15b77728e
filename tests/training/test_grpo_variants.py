"""GRPO's later variants: Dr. GRPO's centred advantages and DAPO's dynamic sampling, by hand."""

import math

import pytest
import torch

from lmforge.training.losses import group_advantages
from lmforge.training.rollouts import Rollout, informative_groups, keep_groups


def test_dr_grpo_advantages_are_centred_not_scaled():
    """Dr. GRPO (``scale=False``): r − mean_g r, so a group with one success in four gives it 0.75
    (not 1/std = 1.73) and reward scale is kept; equal rewards still give zero."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 1.0, 0.0]])
    adv = group_advantages(rewards, scale=False)
    assert adv[0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert adv[1].tolist() == [0.0] * 4
    assert adv[2].tolist() == pytest.approx([-0.5, 0.5, 0.5, -0.5])
    assert torch.allclose(group_advantages(rewards * 10, scale=False), adv * 10)  # scale kept
    scaled = group_advantages(rewards, eps=1e-8)
    assert scaled[0, 0].item() == pytest.approx(0.75 / math.sqrt(3 / 16), rel=1e-5)  # std sqrt(3)/4


def toy_rollout(rewards: list[list[float]], lengths: list[int]) -> Rollout:
    """A rollout of groups of 2 whose row i holds token i + 1 on ``lengths[i]`` completion positions."""
    T, B = max(lengths), len(lengths)
    x = torch.zeros(B, T, dtype=torch.long)
    y = torch.tensor([[i + 1] * T for i in range(B)])
    m = torch.tensor([[t < n for t in range(T)] for n in lengths])
    r = torch.tensor(rewards)
    logp = -y.float()  # row i's log-probabilities are −(i + 1): tells the rows apart after the merge
    adv = group_advantages(r, scale=False).reshape(-1)
    return Rollout(x, y, m, adv, r, logp, logp * 2, completions=list(range(B)))


def test_dynamic_sampling_keeps_only_groups_with_signal_up_to_the_limit():
    """DAPO: groups whose rewards are all equal are dropped; the others are merged in order, rows
    re-padded to the longest, each keeping its own advantages, at most ``limit`` groups."""
    assert informative_groups(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])).tolist() == [
        False,
        True,
        False,
    ]
    a = toy_rollout([[1.0, 1.0], [0.0, 1.0]], [2, 1, 1, 2])  # group 0 all right: no signal
    b = toy_rollout([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [1, 1, 3, 1, 2, 2])
    kept = keep_groups([a, b], group_size=2, limit=2)
    assert kept.rewards.tolist() == [[0.0, 1.0], [1.0, 0.0]]  # a's group 1, then b's group 1
    assert kept.advantages.tolist() == [-0.5, 0.5, 0.5, -0.5]
    assert kept.completions == [2, 3, 2, 3]
    assert kept.x.shape == (4, 3)  # padded to b's longest row
    assert kept.m.sum(dim=1).tolist() == [1, 2, 3, 1]  # the tokens of the kept rows only
    assert kept.old_logp[:, 0].tolist() == [-3.0, -4.0, -3.0, -4.0]
    assert kept.ref_logp[:, 0].tolist() == [-6.0, -8.0, -6.0, -8.0]
    assert not kept.m[:2, 2].any()  # the padding of a's rows is masked out
    assert len(keep_groups([a, b], group_size=2, limit=5).rewards) == 3  # every informative group
    assert keep_groups([b], group_size=2, limit=1).rewards.tolist() == [[1.0, 0.0]]
    none = toy_rollout([[1.0, 1.0]], [1, 1])
    assert keep_groups([none], group_size=2, limit=4) is None
