"""Alignment library: DPO / Bradley–Terry / Plackett–Luce / GRPO math against hand computations, the
frozen reference, DPO and a reward model learning a toy preference, and the verifiable rewards."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lmforge.training import ppo
from lmforge.training.logprobs import Reference, encode_response, sequence_logprobs, token_logprobs
from lmforge.training.losses import (
    bradley_terry_loss,
    clipped_policy_loss,
    dpo_loss,
    group_advantages,
    kl_k3,
    plackett_luce_loss,
)
from lmforge.training.preferences import encode_pairs
from lmforge.training.reward_model import RewardModel
from lmforge.training.rewards import arithmetic_problems, correctness_reward, extract_answer, format_reward
from lmforge.training.rollouts import Rollout, grpo_loss_sum, rollout

GOOD = "good great fine nice".split()
BAD = "bad awful poor ugly".split()


@pytest.fixture(scope="module")
def tiny():
    """``(tokenizer, fresh decoder builder)``: a BPE tokenizer and a 1-layer d=32 decoder factory."""
    from lmforge.model.checkpoint import build_model
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import train_bpe

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # pay torch.optim's one-time start-up here
    rng = random.Random(0)
    words = GOOD + BAD + "the a is was say reply 0 1 2 3 4 5 6 7 8 9 + = ####".split()
    tok = train_bpe([" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)], vocab_size=300)
    mcfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=48, n_layer=1, n_head=2, n_embd=32)

    def build(seed: int = 0):
        torch.manual_seed(seed)
        return build_model(mcfg)

    return tok, build


def toy_pairs(tok, n: int, seed: int = 0):
    from lmforge.data.preferences import Preference

    rng = random.Random(seed)
    prefs = []
    for _ in range(n):
        prompt = ({"role": "user", "content": f"say {rng.choice(GOOD + BAD)}"},)
        prefs.append(
            Preference(
                prompt, f"{rng.choice(GOOD)} {rng.choice(GOOD)}", f"{rng.choice(BAD)} {rng.choice(BAD)}"
            )
        )
    pairs, dropped = encode_pairs(tok, prefs, 48)
    assert dropped == 0
    return pairs


def batch(pairs):
    from lmforge.training.batches import lm_batch

    return lm_batch([c for c, _ in pairs] + [r for _, r in pairs], pad_id=2)


def test_dpo_loss_hand_computed():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-2.0, -5.0, -3.0, -4.0))
    losses, c, r = dpo_loss(pc, pr, rc, rr, beta=0.5)
    h = (-2 + 3) - (-5 + 4)  # 2
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * h))))
    assert (c.item(), r.item()) == (pytest.approx(0.5), pytest.approx(-0.5))
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")
    assert ipo.item() == pytest.approx((h - 1.0) ** 2)
    same, _, _ = dpo_loss(pc, pr, pc, pr, beta=0.1)
    assert same.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="hinge")


def test_encode_response_masks_the_last_reply_only(tiny):
    from lmforge.tokenizer.chat import render_chat

    tok, _ = tiny
    prompt = [
        {"role": "user", "content": "say"},
        {"role": "assistant", "content": "good"},
        {"role": "user", "content": "again"},
    ]
    ids, mask = encode_response(tok, prompt, "fine", 48)
    full, full_mask = render_chat(tok, [*prompt, {"role": "assistant", "content": "fine"}])
    assert ids == full
    n_reply = len(tok.encode("fine", add_special_tokens=False).ids) + 1  # + <|end|>
    assert sum(mask) == n_reply and sum(full_mask) > n_reply and all(mask[-n_reply:])
    short, short_mask = encode_response(tok, prompt, "fine " * 40, 16)
    assert len(short) == 17 and any(short_mask)


def test_dpo_starts_at_ln2_falls_and_keeps_the_reference_frozen(tiny):
    tok, build = tiny
    policy = build()
    ref = Reference(policy)
    frozen = {k: v.clone() for k, v in ref.model.state_dict().items()}
    pairs = toy_pairs(tok, 32)
    x, y, m = batch(pairs)
    with torch.no_grad():
        ref_lp = ref.token_logprobs(x, y).mul(m).sum(1).view(2, -1)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(15):
        lp, _ = sequence_logprobs(policy, x, y, m)
        pc, pr = lp.view(2, -1)
        loss, _, _ = dpo_loss(pc, pr, ref_lp[0], ref_lp[1], beta=0.5)
        losses.append(loss.mean())
        opt.zero_grad()
        losses[-1].backward()
        opt.step()
    assert losses[0].item() == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1].item() < 0.5 * math.log(2)
    assert all(not p.requires_grad for p in ref.model.parameters())
    assert all(torch.equal(v, ref.model.state_dict()[k]) for k, v in frozen.items())


def test_lora_reference_is_the_base_model(tiny):
    from lmforge.model.lora import LoraConfig, apply_lora

    tok, build = tiny
    base = build()
    x, y, m = batch(toy_pairs(tok, 4))
    with torch.no_grad():
        before = token_logprobs(base, x, y)
    apply_lora(base, LoraConfig(r=4, alpha=8.0))
    ref = Reference(base)
    assert ref.uses_lora and ref.model is None
    opt = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (-token_logprobs(base, x, y).mul(m).sum()).backward()
        opt.step()
    assert not torch.allclose(token_logprobs(base, x, y), before)  # the policy moved
    assert torch.allclose(ref.token_logprobs(x, y), before, atol=1e-6)  # the reference did not
    assert base.training


def test_bradley_terry_and_plackett_luce():
    c, r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    bt = bradley_terry_loss(c, r)
    assert bt.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(2))])
    assert plackett_luce_loss(torch.stack([c, r], dim=1)).tolist() == pytest.approx(bt.tolist())
    s = torch.tensor([[3.0, 1.0, 0.0]])
    e = [math.exp(v) for v in (3.0, 1.0, 0.0)]
    hand = -(math.log(e[0] / sum(e)) + math.log(e[1] / (e[1] + e[2])))
    assert plackett_luce_loss(s).item() == pytest.approx(hand)


def test_reward_model_learns_a_separable_preference(tiny):
    from lmforge.tokenizer.texts import pad_batch

    tok, build = tiny
    rm = RewardModel(build())
    train, held = toy_pairs(tok, 48, seed=1), toy_pairs(tok, 24, seed=2)

    def scores(pairs):
        idx, mask = pad_batch([c for (c, _), _ in pairs] + [r for _, (r, _) in pairs], 2)
        return rm(idx, mask).view(2, -1)

    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    for _ in range(25):
        c, r = scores(train)
        loss = bradley_terry_loss(c, r).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        c, r = scores(held)
    assert float((c > r).float().mean()) >= 0.9


def test_group_advantages_and_clipped_objective_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 1.0, 2.0, 2.0]])
    adv = group_advantages(rewards, eps=0.0 + 1e-8)
    assert adv[0].tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-6)  # mean 0.5, std 0.5
    assert adv[1].tolist() == [0.0] * 4  # no signal in a group of equal rewards
    s = math.sqrt(0.5)  # mean 2, population std sqrt((1 + 1 + 0 + 0) / 4)
    assert adv[2].tolist() == pytest.approx([1 / s, -1 / s, 0.0, 0.0], abs=1e-6)
    assert adv.mean(dim=1).abs().max() < 1e-6  # zero mean per group
    assert adv[[0, 2]].std(dim=1, unbiased=False).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    shifted = group_advantages(rewards * 10 + 3, eps=1e-8)  # invariant to reward scale and shift
    assert torch.allclose(shifted, adv, atol=1e-5)
    logp = torch.log(torch.tensor([[0.6, 0.3]]))
    old = torch.log(torch.tensor([[0.4, 0.5]]))  # ratios 1.5, 0.6
    pos = clipped_policy_loss(logp, old, torch.tensor([2.0]), clip_eps=0.2)
    assert pos.tolist()[0] == pytest.approx([-1.2 * 2, -0.6 * 2])  # min(ρA, clip(ρ)A) with A > 0
    neg = clipped_policy_loss(logp, old, torch.tensor([-1.0]), clip_eps=0.2)
    assert neg.tolist()[0] == pytest.approx([1.5, 0.8])  # A < 0: the pessimistic term
    assert kl_k3(logp, logp).abs().max() == 0
    r = -0.5
    assert kl_k3(torch.tensor([0.0]), torch.tensor([r])).item() == pytest.approx(math.exp(r) - r - 1)


@pytest.mark.parametrize(
    "ratio,adv,clipped",
    [(1.5, 2.0, True), (0.6, -1.0, True), (1.5, -1.0, False), (0.6, 2.0, False), (1.1, 2.0, False)],
)
def test_clipping_stops_the_gradient_outside_the_trust_region(ratio, adv, clipped):
    """Outside [1−ε, 1+ε] on the side the advantage pushes towards, the clipped branch is the minimum
    and passes no gradient; otherwise d loss / d log π = −ρ A (Schulman et al. 2017, eq. 7)."""
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss = clipped_policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), clip_eps=0.2)
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(0.0 if clipped else -ratio * adv)


class Bigram(torch.nn.Module):
    """A decoder reduced to a table: the logits of the next token depend on the current one only."""

    def __init__(self, vocab: int, seed: int):
        super().__init__()
        self.table = torch.nn.Parameter(
            torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x]  # [B, T, V]


def bigram_rollout(policy: torch.nn.Module, ref: torch.nn.Module, advantages: list[float]) -> Rollout:
    """Two rows: a 1-token completion and a 3-token one (prompt token 0 unmasked, padding unmasked)."""
    x = torch.tensor([[0, 1, 0, 0], [0, 2, 3, 1]])
    y = torch.tensor([[1, 0, 0, 0], [2, 3, 1, 0]])
    m = torch.tensor([[False, True, False, False], [False, True, True, True]])
    with torch.no_grad():
        old = token_logprobs(policy, x, y)
    ref_logp = token_logprobs(ref, x, y)
    rewards = torch.tensor([advantages])
    return Rollout(x, y, m, torch.tensor(advantages), rewards, old, ref_logp, completions=[])


def test_grpo_loss_is_summed_per_token_and_beta_scales_the_k3_term():
    """At ratio 1 (μ = 1) the surrogate of a token is −A, summed over completion tokens only: a
    3-token completion weighs three times a 1-token one (per-token aggregation, as DAPO / Dr. GRPO,
    not the paper's per-sequence mean). The KL term is β × Σ k3, k3 = exp(r) − r − 1, r = log π_ref − log π."""
    policy, ref = Bigram(4, seed=0), Bigram(4, seed=1)
    ro = bigram_rollout(policy, ref, [1.0, -1.0])
    zero, kl = grpo_loss_sum(policy, ro, clip_eps=0.2, beta=0.0)
    assert zero.item() == pytest.approx(-1.0 * 1 + 1.0 * 3)  # −A per token: row 1 has 1 token, row 2 has 3
    logp = token_logprobs(policy, ro.x, ro.y).detach()
    r = ro.ref_logp - logp
    k3 = ((torch.exp(r) - r - 1) * ro.m).sum().item()  # by hand
    assert kl == pytest.approx(k3 / 4)  # mean over the 4 completion tokens, reported for any β
    for beta in (0.04, 0.5):
        loss, _ = grpo_loss_sum(policy, ro, clip_eps=0.2, beta=beta)
        assert loss.item() == pytest.approx(zero.item() + beta * k3, rel=1e-5)
    same = bigram_rollout(policy, policy, [1.0, -1.0])
    assert grpo_loss_sum(policy, same, clip_eps=0.2, beta=1.0)[1] == 0.0  # π = π_ref: no KL


def test_grpo_loss_gradient_is_the_advantage_weighted_policy_gradient():
    """μ = 1, β = 0: ∇ loss = −Σ_tokens A ∇ log π (the clip is inactive at ratio 1)."""
    policy = Bigram(4, seed=0)
    ro = bigram_rollout(policy, policy, [0.5, -2.0])
    loss, _ = grpo_loss_sum(policy, ro, clip_eps=0.2, beta=0.0)
    loss.backward()
    got = policy.table.grad.clone()
    policy.table.grad = None
    lp = token_logprobs(policy, ro.x, ro.y)
    (-(lp * ro.m * ro.advantages[:, None]).sum()).backward()
    assert torch.allclose(got, policy.table.grad, atol=1e-6)


def test_verifiable_rewards_and_task_generator():
    assert extract_answer("so 3+4 is 7 #### 7") == "7"
    assert extract_answer("it is 1,234.") == "1234"
    assert extract_answer("no digits") is None
    assert correctness_reward("the answer is 12", "#### 12") == 1.0
    assert correctness_reward("#### 13", "12") == 0.0
    assert format_reward("#### 5") == 1.0 and format_reward("5") == 0.0
    probs = arithmetic_problems(50, digits=2, ops="+-*", seed=3)
    assert probs == arithmetic_problems(50, digits=2, ops="+-*", seed=3)
    for p in probs:
        assert eval(p["question"].rstrip("=")) == int(p["answer"])  # noqa: S307 - our own generated text
    with pytest.raises(ValueError):
        arithmetic_problems(1, ops="/")
    with pytest.raises(ValueError):
        arithmetic_problems(1, digits=2, min_digits=3)


def test_reversed_digit_arithmetic_and_its_reward():
    """``reverse``: numbers least-significant digit first, one digit per token; the same draws as the
    plain style; a completion of single-spaced digits is read as one number."""
    plain = arithmetic_problems(300, digits=2, min_digits=1, seed=5)
    rev = arithmetic_problems(300, digits=2, min_digits=1, seed=5, reverse=True)
    assert rev[0]["question"].count(" ") >= 3 and "+" in rev[0]["question"]
    for p, r in zip(plain, rev):
        a, b = (x.replace(" ", "")[::-1] for x in r["question"].rstrip(" =").split(" + "))
        assert f"{a}+{b}=" == p["question"]
        assert r["answer"].replace(" ", "")[::-1] == p["answer"]
    lengths = {len(p["question"].split("+")[0]) for p in plain}
    assert lengths == {1, 2}  # min_digits=1: one- and two-digit operands
    assert arithmetic_problems(1, ops="-", seed=1, reverse=True, digits=1)[0]["answer"][0] in "-0123456789"
    assert extract_answer("5 8") == "58" and extract_answer(" 0 5 ") == "05"
    assert correctness_reward("3 0 1", "#### 301") == 1.0
    assert correctness_reward("3 0 1", "#### 103") == 0.0
    assert extract_answer("I have 3 apples and 5 pears") == "5"  # prose keeps its last number


def test_grpo_raises_a_toy_reward_within_a_few_steps(tiny):
    """Reward = fraction of sampled tokens in the lower half of the vocabulary; GRPO must raise it."""
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams
    from lmforge.tokenizer.chat import render_chat

    tok, build = tiny
    policy = build(seed=1)
    ref = Reference(policy)
    engine = Engine(policy, tok)
    half = tok.get_vocab_size() // 2
    prompts = [
        render_chat(tok, [{"role": "user", "content": w}], add_generation_prompt=True)[0]
        for w in ("say", "good")
    ]

    def reward(p: int, c) -> float:
        return sum(t < half for t in c.ids) / max(len(c.ids), 1)

    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.0)
    means = []
    for step in range(12):
        params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=100 * step, logprobs=False)
        ro = rollout(engine, prompts, reward, group_size=8, params=params, pad_id=2, reference=ref)
        assert ro.advantages.view(2, 8).mean(dim=1).abs().max() < 1e-5
        means.append(ro.rewards.mean().item())
        loss, kl = grpo_loss_sum(policy, ro, clip_eps=0.2, beta=0.01)
        opt.zero_grad()
        (loss / ro.m.sum()).backward()
        opt.step()
        if step == 0:
            assert kl == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.1, means  # measured: 0.50 → 0.63


def test_rollouts_sample_from_the_policy_after_each_optimiser_step(tiny):
    """The engine's log-probabilities of what it sampled equal the policy's own after an update by
    ``build_optimizer``'s fused AdamW, and the rollout's ratio starts at 1. (The fused step did not
    bump version counters, so the engine kept its first fused weights: rollouts came from the initial
    policy, and the clipped ratio and the k3 KL compared two different models.)"""
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams
    from lmforge.tokenizer.chat import render_chat
    from lmforge.training.optim import build_optimizer

    tok, build = tiny
    policy = build(seed=2)
    engine = Engine(policy, tok)
    prompts = [render_chat(tok, [{"role": "user", "content": "say"}], add_generation_prompt=True)[0]]
    opt = build_optimizer(policy, lr=0.05, weight_decay=0.0)
    for step in range(3):
        params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=step, logprobs=True)
        ro = rollout(engine, prompts, lambda i, c: float(len(c.ids)), group_size=4, params=params, pad_id=2)
        sampled = torch.tensor([lp for c in ro.completions for lp in c.logprobs])
        scored = ro.old_logp[ro.m]  # no stop token is appended: stop_ids is empty
        assert torch.allclose(sampled, scored, atol=1e-4), (step, sampled, scored)
        for p in policy.parameters():  # a large step in every weight, whatever the advantages
            p.grad = torch.randn_like(p)
        opt.step()


def test_ppo_pieces_by_hand():
    mask = torch.tensor([[False, True, True, True, False]])
    logp = torch.tensor([[0.0, -1.0, -2.0, -1.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -2.0, -0.5, 0.0]])
    r = ppo.kl_shaped_rewards(torch.tensor([2.0]), logp, ref, mask, kl_coef=0.1)
    assert r.tolist()[0] == pytest.approx([0.0, -0.05, 0.0, 0.05 + 2.0, 0.0])
    values = torch.tensor([[9.0, 0.5, 1.0, 1.5, 9.0]])
    adv, ret = ppo.gae(r, values, mask, gamma=1.0, lam=1.0)  # λ = γ = 1: return-to-go minus value
    togo = [r[0, 1:4].sum().item(), r[0, 2:4].sum().item(), r[0, 3].item()]
    assert adv.tolist()[0] == pytest.approx([0.0, togo[0] - 0.5, togo[1] - 1.0, togo[2] - 1.5, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.0, *togo, 0.0])
    adv0, _ = ppo.gae(r, values, mask, gamma=1.0, lam=0.0)  # λ = 0: one-step TD errors
    assert adv0[0, 1].item() == pytest.approx(r[0, 1].item() + 1.0 - 0.5)
    vl = ppo.clipped_value_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.0]), clip_eps=0.2)
    assert vl.item() == pytest.approx(0.5 * max(2.0**2, 1.2**2))


def test_ppo_raises_a_toy_reward_within_a_few_steps(tiny):
    """Score = fraction of reply tokens in the lower half of the vocabulary; PPO (value head, GAE, KL
    penalty, two updates per rollout) must raise it, with the policy's KL to the reference growing."""
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams
    from lmforge.tokenizer.chat import render_chat
    from lmforge.tokenizer.train import special_id

    tok, build = tiny
    policy = build(seed=1)
    ref = Reference(policy)
    pv = ppo.PolicyWithValue(policy)
    engine = Engine(policy, tok)
    half = tok.get_vocab_size() // 2
    prompts = [
        render_chat(tok, [{"role": "user", "content": w}], add_generation_prompt=True)[0]
        for w in ("say", "good")
    ]

    def score(rows, completions) -> torch.Tensor:
        return torch.tensor([sum(t < half for t in c.ids) / max(len(c.ids), 1) for c in completions])

    opt = torch.optim.AdamW(pv.parameters(), lr=1e-2, weight_decay=0.0)
    means, kls = [], []
    for step in range(12):
        params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=100 * step)
        b = ppo.ppo_batch(
            pv, engine, prompts, score, samples_per_prompt=8, params=params, pad_id=2,
            end_id=special_id(tok, "end"), reference=ref, kl_coef=0.01,
        )  # fmt: skip
        means.append(b.scores.mean().item())
        kls.append(b.kl.mean().item())
        assert b.advantages[b.ro.m].mean().abs() < 1e-5  # whitened over the reply tokens
        for _ in range(2):
            loss = ppo.ppo_loss_sum(pv, b, clip_eps=0.2, vf_coef=0.5)
            opt.zero_grad()
            (loss / b.ro.m.sum()).backward()
            opt.step()
    assert kls[0] == pytest.approx(0.0, abs=1e-5)  # policy == reference before the first update
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.1, means


def test_dpo_gradient_sign_on_a_toy_pair(tiny):
    """At step 0 (policy = reference) ∂L/∂log π(y_w) = −β/2 and ∂L/∂log π(y_l) = +β/2; one gradient step on a
    decoder raises the chosen reply's log-probability margin over the rejected one."""
    pc, pr = torch.tensor([-3.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.5)
    loss.sum().backward()
    assert loss.item() == pytest.approx(math.log(2))
    assert pc.grad.item() == pytest.approx(-0.25) and pr.grad.item() == pytest.approx(0.25)
    tok, build = tiny
    policy = build(seed=3)
    x, y, m = batch(toy_pairs(tok, 1, seed=4))
    with torch.no_grad():
        ref = sequence_logprobs(policy, x, y, m)[0]
    lp, _ = sequence_logprobs(policy, x, y, m)
    loss, _, _ = dpo_loss(lp[0:1], lp[1:2], ref[0:1], ref[1:2], beta=0.5)
    loss.sum().backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.05 * p.grad
        after = sequence_logprobs(policy, x, y, m)[0]
    assert after[0] - after[1] > ref[0] - ref[1]  # chosen up relative to rejected
    assert dpo_loss(after[0:1], after[1:2], ref[0:1], ref[1:2], beta=0.5)[0].item() < math.log(2)


def test_gae_with_discount_by_hand():
    """γ = 0.9, λ = 0.5 over a three-token reply: δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}."""
    mask = torch.tensor([[False, True, True, True]])
    rewards = torch.tensor([[0.0, 0.1, -0.2, 1.0]])
    values = torch.tensor([[5.0, 0.3, 0.5, 0.4]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d3 = 1.0 - 0.4  # the value after the last token is 0
    d2 = -0.2 + 0.9 * 0.4 - 0.5
    d1 = 0.1 + 0.9 * 0.5 - 0.3
    a3, a2 = d3, d2 + 0.45 * d3
    a1 = d1 + 0.45 * a2
    assert adv.tolist()[0] == pytest.approx([0.0, a1, a2, a3])
    assert ret.tolist()[0] == pytest.approx([0.0, a1 + 0.3, a2 + 0.5, a3 + 0.4])


def ppo_toy_batch(tok, pv, prompts, score, *, ref, kl_coef, seed, n=8, tokens=6):
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams
    from lmforge.tokenizer.train import special_id

    params = SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=seed)
    return ppo.ppo_batch(
        pv, Engine(pv.policy, tok), prompts, score, samples_per_prompt=n, params=params, pad_id=2,
        end_id=special_id(tok, "end"), reference=ref, kl_coef=kl_coef,
    )  # fmt: skip


def say_prompts(tok, words=("say", "good")):
    from lmforge.tokenizer.chat import render_chat

    return [render_chat(tok, [{"role": "user", "content": w}], add_generation_prompt=True)[0] for w in words]


def test_value_head_and_ppo_loss_by_hand(tiny):
    """The value head is one linear map of the policy's final hidden states; ``PolicyWithValue`` gives the
    policy's own log-probabilities; ``ppo_loss_sum`` is the clipped surrogate + vf_coef × the clipped value
    loss summed over reply tokens only, computed here term by term with ratios away from 1."""
    from lmforge.model.heads import hidden_states

    tok, build = tiny
    policy = build(seed=2)
    pv = ppo.PolicyWithValue(policy)
    b = ppo_toy_batch(tok, pv, say_prompts(tok), lambda r, c: torch.ones(len(c)), ref=Reference(policy),
                      kl_coef=0.1, seed=5, n=2)  # fmt: skip
    with torch.no_grad():
        logp, values = pv(b.ro.x, b.ro.y)
        hidden = hidden_states(policy, b.ro.x)
        by_hand = hidden @ pv.value.proj.weight[0] + pv.value.proj.bias[0]
    assert torch.allclose(values, by_hand, atol=1e-5)
    assert torch.allclose(logp, token_logprobs(policy, b.ro.x, b.ro.y), atol=1e-5)
    assert torch.allclose(b.ro.old_logp, logp, atol=1e-5)  # sampled by this policy
    # move the "old" policy and values so that ratios and value changes fall inside and outside the clips
    shift = torch.linspace(-0.5, 0.5, b.ro.m.numel()).view_as(b.ro.m)
    b.ro.old_logp = logp - shift  # ratio = exp(shift) ∈ [0.61, 1.65]
    b.old_values = values - 2 * shift
    loss = ppo.ppo_loss_sum(pv, b, clip_eps=0.2, vf_coef=0.5)
    rho, adv, m = shift.exp(), b.advantages, b.ro.m
    pg = -torch.minimum(rho * adv, rho.clamp(0.8, 1.2) * adv)
    v_clip = b.old_values + (values - b.old_values).clamp(-0.2, 0.2)
    vl = 0.5 * torch.maximum((values - b.returns) ** 2, (v_clip - b.returns) ** 2)
    assert loss.item() == pytest.approx(((pg + 0.5 * vl) * m).sum().item(), rel=1e-4)
    assert ((rho > 1.2) & m).any() and ((rho < 0.8) & m).any()  # both clips were exercised


def test_value_head_learns_the_returns(tiny):
    """Trained on the value loss alone, the value head's error on a fixed rollout's returns falls by 90%."""
    tok, build = tiny
    policy = build(seed=2)
    pv = ppo.PolicyWithValue(policy)
    b = ppo_toy_batch(tok, pv, say_prompts(tok), lambda r, c: torch.tensor([float(len(x.ids)) for x in c]),
                      ref=Reference(policy), kl_coef=0.0, seed=9)  # fmt: skip
    opt = torch.optim.Adam(pv.value.parameters(), lr=5e-2)
    m = b.ro.m

    def error() -> torch.Tensor:
        return (((pv(b.ro.x, b.ro.y)[1] - b.returns) ** 2) * m).sum() / m.sum()

    first = error().item()
    for _ in range(150):
        opt.zero_grad()
        error().backward()
        opt.step()
    assert error().item() < 0.1 * first


def test_ppo_finds_the_target_tokens_of_a_bandit(tiny):
    """A one-token bandit: reward 1 when the reply's token is one of 8 targets, else 0 (optimum 1.0, where
    the untrained policy starts near 8/300). PPO with GAE, clipping and a small KL penalty must get the
    sampled reward above 0.9 within 30 rollouts."""
    tok, build = tiny
    policy = build(seed=1)
    ref = Reference(policy)
    pv = ppo.PolicyWithValue(policy)
    with torch.no_grad():
        targets = policy(torch.tensor([say_prompts(tok)[0]]))[0, -1].topk(8).indices.tolist()  # reachable

    def score(rows, completions) -> torch.Tensor:
        return torch.tensor([float(bool(c.ids) and c.ids[0] in targets) for c in completions])

    opt = torch.optim.AdamW(pv.parameters(), lr=3e-2, weight_decay=0.0)
    means = []
    for step in range(30):
        b = ppo_toy_batch(
            tok, pv, say_prompts(tok), score, ref=ref, kl_coef=0.01, seed=7 * step, n=16, tokens=1
        )
        means.append(b.scores.mean().item())
        if min(means[-2:]) > 0.9:
            break
        for _ in range(2):
            loss = ppo.ppo_loss_sum(pv, b, clip_eps=0.2, vf_coef=0.5)
            opt.zero_grad()
            (loss / b.ro.m.sum()).backward()
            opt.step()
    assert means[0] < 0.5 and min(means[-2:]) > 0.9, means


def test_ppo_kl_penalty_alone_pulls_the_policy_back_to_the_reference(tiny):
    """With a score of 0 for every reply the only reward is −kl_coef · log π/π_ref per token: PPO must shrink
    the KL of a policy that was pushed away from its reference."""
    tok, build = tiny
    policy = build(seed=1)
    ref = Reference(policy)
    with torch.no_grad():
        policy.lm_head.weight.add_(torch.randn_like(policy.lm_head.weight), alpha=0.15)
    pv = ppo.PolicyWithValue(policy)
    opt = torch.optim.AdamW(pv.parameters(), lr=1e-2, weight_decay=0.0)
    kls = []
    for step in range(12):
        b = ppo_toy_batch(tok, pv, say_prompts(tok), lambda r, c: torch.zeros(len(c)), ref=ref, kl_coef=1.0,
                          seed=11 * step)  # fmt: skip
        kls.append(b.kl.mean().item())
        for _ in range(2):
            loss = ppo.ppo_loss_sum(pv, b, clip_eps=0.2, vf_coef=0.5)
            opt.zero_grad()
            (loss / b.ro.m.sum()).backward()
            opt.step()
    assert kls[0] > 0.5 and sum(kls[-3:]) / 3 < 0.6 * sum(kls[:3]) / 3, kls  # measured: 5.1 → 2.4
