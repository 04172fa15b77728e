"""Tests for speculative decoding (``inference/speculative.py``): greedy output equals plain greedy
decoding token for token (n-gram and draft-model drafters, batch 1 and ragged batches, several k), a
draft equal to the target accepts everything, a draft that never agrees changes nothing, stop tokens /
stop strings / limits / streaming / logprobs as without a draft, seeded sampling reproduces, and the
sampled tokens follow the target's distribution (chi-square against the exact distribution).

The models are tiny decoders trained for a few seconds on a Markov chain (each token is followed by a
fixed successor 85% of the time), so greedy output is varied text that a draft partly predicts —
random weights fall into one repeated token, on which every draft agrees.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams
from lmforge.inference.speculative import adapt, ngram_draft, verify
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.tokenizer.train import train_bpe


@pytest.fixture(scope="module")
def tok():
    text = ["the cat sat on the mat and the dog ran to the park " * 3, "a b c d e f g h i j k l m n o p"] * 20
    return train_bpe(text, vocab_size=300)


def chain(n: int, T: int, vocab: int, g: torch.Generator) -> torch.Tensor:
    """``[n, T]`` token rows: each token's fixed successor with probability 0.85, else a random token."""
    succ = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
    x = torch.empty(n, T, dtype=torch.long)
    x[:, 0] = torch.randint(vocab, (n,), generator=g)
    for t in range(1, T):
        jump = torch.rand(n, generator=g) < 0.15
        x[:, t] = torch.where(jump, torch.randint(vocab, (n,), generator=g), succ[x[:, t - 1]])
    return x


def train(vocab: int, steps: int, seed: int, **overrides) -> Decoder:
    cfg = {"vocab_size": vocab, "block_size": 48, "n_layer": 2, "n_head": 4, "n_embd": 32, **overrides}
    torch.manual_seed(seed)
    model = Decoder(ModelConfig(**cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = chain(16, 33, vocab, g)
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models(tok):
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        vocab = tok.get_vocab_size()
        target = train(vocab, 120, 0)
        draft = train(vocab, 25, 1, n_layer=1, n_embd=16, n_head=2)  # agrees with the target in part
    return target, draft


PROMPTS = [[0, 5, 9, 3], [0, 7], [0, 11, 12, 13, 14, 15, 16, 17, 18], [0, 2, 40, 41, 2, 40]]


def plain(model: Decoder, prompts: list[list[int]], params: SamplingParams, tok=None) -> list:
    return Engine(model, tok).generate(prompts, params)


def repeating(model: Decoder) -> list[list[int]]:
    """Prompts that contain the target's own continuation, so prompt lookup finds long matches."""
    first = plain(model, [[0, 21]], SamplingParams(max_new_tokens=12, temperature=0))[0].ids
    return [[0, 21, *first, 0, 21], [0, 33, 34], [0, 21, *first[:5], 9, 0, 21, *first[:3]]]


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("which", ["ngram", "draft", "self"])
def test_greedy_equals_plain_greedy_batch1_and_ragged(models, which: str, k: int) -> None:
    target, small = models
    draft = {"ngram": "ngram", "draft": small, "self": target}[which]
    params = SamplingParams(max_new_tokens=30, temperature=0)
    engine = Engine(target, draft=draft, draft_tokens=k, draft_gate=False)  # passes counted below
    for prompts in (PROMPTS[:1], PROMPTS, repeating(target)):
        want = [c.ids for c in plain(target, prompts, params)]
        assert [c.ids for c in engine.generate(prompts, params)] == want
        assert engine.stats.tokens == sum(map(len, want))
        assert engine.stats.passes < engine.stats.tokens - len(prompts) + 1 or which == "draft"
    assert engine.stats.accepted > 0  # the drafts were used, not only the fallback


def test_rows_accept_different_counts_in_one_pass(models) -> None:
    """A ragged batch where one row's drafts are all accepted while another's are rejected."""
    target, small = models
    prompts = repeating(target)
    engine = Engine(target, draft="ngram", draft_tokens=4)
    params = SamplingParams(max_new_tokens=20, temperature=0)
    out = engine.generate(prompts, params)
    assert [c.ids for c in out] == [c.ids for c in plain(target, prompts, params)]
    alone = [Engine(target, draft="ngram", draft_tokens=4) for _ in prompts]
    per_row = []
    for e, p in zip(alone, prompts):
        e.generate([p], params)
        per_row.append(e.stats.acceptance)
    assert max(per_row) - min(per_row) >= 0.5, per_row


def test_a_draft_equal_to_the_target_accepts_everything(models) -> None:
    target, _ = models
    k, n = 4, 31
    engine = Engine(target, draft=target, draft_tokens=k, draft_gate=False)  # passes counted below
    params = SamplingParams(max_new_tokens=n, temperature=0)
    out = engine.generate(PROMPTS[:1], params)[0]
    assert out.ids == plain(target, PROMPTS[:1], params)[0].ids
    s = engine.stats
    assert s.accepted == s.drafted > 0
    assert s.passes == math.ceil((n - 1) / (k + 1))  # the first token comes from the prefill
    plain_engine = Engine(target)
    plain_engine.generate(PROMPTS[:1], params)
    assert plain_engine.stats.passes == n - 1


def test_a_draft_that_never_agrees_gives_the_exact_output(models) -> None:
    target, small = models
    params = SamplingParams(max_new_tokens=25, temperature=0)
    want = [c.ids for c in plain(target, PROMPTS, params)]
    wrong = min(set(range(target.config.vocab_size)) - {t for w in want for t in w})
    cfg = dict(n_layer=1, n_embd=16, n_head=2, norm="layernorm", bias=True, tie_embeddings=False)
    never = train(target.config.vocab_size, 0, 3, **cfg)
    with torch.no_grad():  # the final norm outputs its bias alone, which only token `wrong`'s row sees
        never.norm.weight.zero_()
        never.norm.bias.fill_(1.0)
        never.lm_head.weight.zero_()
        never.lm_head.weight[wrong] = 1.0
    engine = Engine(target, draft=never, draft_tokens=3)
    assert [c.ids for c in engine.generate(PROMPTS, params)] == want
    assert engine.stats.accepted == 0 and engine.stats.drafted > 0
    assert engine.stats.passes == 24  # one token per row per pass


def test_ngram_draft_takes_the_most_recent_longest_match() -> None:
    seq = [1, 2, 3, 9, 9, 5, 2, 3, 7, 8, 4, 2, 3]
    assert ngram_draft(seq, 3, 2) == [7, 8]  # "2 3" last occurred before 7 8 (no earlier "4 2 3")
    assert ngram_draft(seq, 1, 3) == [7, 8, 4]  # "3": most recent earlier occurrence
    assert ngram_draft([1, 2, 3, 1, 2], 3, 5) == [3, 1, 2]
    assert ngram_draft([5, 6, 7], 3, 4) == []
    assert ngram_draft([5], 3, 4) == []


def test_draft_length_grows_on_acceptance_and_backs_off_on_failure() -> None:
    assert adapt(4.0, 4, 4, 8) == 6.0 and adapt(8.0, 8, 8, 8) == 8.0  # all kept: +2 up to k
    assert adapt(6.0, 6, 2, 8) == 3.0  # some kept: one more than the kept run
    assert adapt(1.0, 1, 0, 8) == 0.5  # none kept: half, below 1 = no drafts
    assert adapt(0.5, 0, 0, 8) == 0.75 and adapt(0.75, 0, 0, 8) == 1.0  # then probe again
    assert adapt(3.0, 0, 0, 8) == 3.0  # no n-gram match: unchanged


@pytest.mark.parametrize("which", ["ngram", "draft"])
def test_stops_limits_streaming_and_logprobs_as_without_a_draft(models, tok, which: str) -> None:
    target, small = models
    draft = "ngram" if which == "ngram" else small
    prompts = [*PROMPTS, *repeating(target)]
    free = plain(target, prompts, SamplingParams(max_new_tokens=30, temperature=0), tok)
    stop_id = free[2].ids[4]
    stop_str = free[0].text[6:9]
    cases = [
        SamplingParams(max_new_tokens=30, temperature=0, stop_ids=frozenset({stop_id})),
        SamplingParams(max_new_tokens=30, temperature=0, stop=[stop_str]),
        SamplingParams(max_new_tokens=7, temperature=0, logprobs=True),
        SamplingParams(max_new_tokens=40, temperature=0),  # block_size 48 ends the longest prompts
    ]
    engine = Engine(target, tok, draft=draft, draft_tokens=4)
    for params in cases:
        want = plain(target, prompts, params, tok)
        got = engine.generate(prompts, params)
        for w, g in zip(want, got):
            assert (g.ids, g.text, g.finish_reason) == (w.ids, w.text, w.finish_reason)
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
        rows_want = [[] for _ in prompts]
        rows_got = [[] for _ in prompts]
        for e in Engine(target, tok).stream(prompts, params):
            rows_want[e.row].append((e.token, e.text, e.finish_reason))
        for e in engine.stream(prompts, params):
            rows_got[e.row].append((e.token, e.text, e.finish_reason))
        assert rows_got == rows_want
    assert any(c.finish_reason == "stop" for c in engine.generate(prompts, cases[0]))
    assert engine.generate(prompts, cases[1])[0].finish_reason == "stop"
    long = engine.generate([list(range(3, 45))], cases[3])[0]
    assert len(long.ids) == 48 - 42 and long.finish_reason == "length"


def test_seeded_sampling_reproduces_and_the_penalty_falls_back(models) -> None:
    target, small = models
    for draft in ("ngram", small):
        engine = Engine(target, draft=draft, draft_tokens=3)
        params = SamplingParams(max_new_tokens=20, temperature=0.9, top_k=40, seed=11)
        a = [c.ids for c in engine.generate(PROMPTS, params)]
        assert a == [c.ids for c in engine.generate(PROMPTS, params)]
        assert engine.stats.drafted > 0
        other = SamplingParams(max_new_tokens=20, temperature=0.9, top_k=40, seed=12)
        assert [c.ids for c in engine.generate(PROMPTS, other)] != a
    penalised = SamplingParams(max_new_tokens=12, temperature=0.8, repetition_penalty=1.5, seed=2)
    engine = Engine(target, draft=small, draft_tokens=3)
    got = [c.ids for c in engine.generate(PROMPTS, penalised)]
    assert got == [c.ids for c in plain(target, PROMPTS, penalised)]  # plain decoding, same draws
    assert engine.stats.drafted == 0


@pytest.mark.parametrize("which", ["ngram", "draft"])
def test_sampled_logprobs_are_the_target_log_probabilities_and_stops_hold(models, which: str) -> None:
    target, small = models
    prompts = [*PROMPTS, *repeating(target)]
    engine = Engine(target, draft="ngram" if which == "ngram" else small, draft_tokens=3)
    params = SamplingParams(
        max_new_tokens=24, temperature=0.7, seed=4, logprobs=True, stop_ids=frozenset({9})
    )
    out = engine.generate(prompts, params)
    assert engine.stats.accepted > 0
    for prompt, c in zip(prompts, out):
        assert 9 not in c.ids and (c.finish_reason == "stop" or len(c.ids) == 24)
        with torch.no_grad():
            logp = torch.log_softmax(target(torch.tensor([prompt + c.ids]))[0], dim=-1)  # [T, V]
        expected = [logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(c.ids)]
        assert c.logprobs == pytest.approx(expected, abs=1e-4)
    assert any(c.finish_reason == "stop" for c in out)


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``; categories expected < 5 times are pooled."""
    from scipy.stats import chi2

    n = int(counts.sum())
    expected = probs.double() * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    stat = float(((obs - exp) ** 2 / exp.clamp(min=1e-12)).sum())
    return float(chi2.sf(stat, len(obs) - 1))


@pytest.mark.parametrize("which", ["ngram", "draft"])
def test_speculative_sampling_follows_the_target_distribution(models, which: str) -> None:
    """N rows of one prompt, seeds seed + i: the second generated token (the first one drafted and
    verified) must follow the target's exact marginal sum_t1 p(t1) p(t2 | t1)."""
    target, small = models
    c = plain(target, [[0, 21]], SamplingParams(max_new_tokens=6, temperature=0))[0].ids
    prompt = [0, 21, *c, 0, 21]  # after the likely t1 = c[0], prompt lookup drafts c[1]
    N, temperature = 3000, 1.3
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt]))[0, -1] / temperature, -1)  # [V]
        V = p1.shape[0]
        ctx = torch.cat([torch.tensor([prompt]).expand(V, -1), torch.arange(V)[:, None]], 1)  # [V, L+1]
        p2 = torch.softmax(target(ctx)[:, -1] / temperature, -1)  # [V, V]: p(t2 | t1)
    marginal = p1 @ p2  # [V]
    draft = "ngram" if which == "ngram" else small
    engine = Engine(target, draft=draft, draft_tokens=2)
    out = engine.generate([prompt] * N, SamplingParams(max_new_tokens=3, temperature=temperature, seed=0))
    assert engine.stats.drafted > N // 20 and engine.stats.accepted < engine.stats.drafted
    second = torch.tensor([c.ids[1] for c in out])
    counts = torch.bincount(second, minlength=V)
    assert chi2_pvalue(counts, marginal) > 1e-3
    # the test has power: the same counts are far from the draft model's or a shifted distribution
    assert chi2_pvalue(counts, torch.roll(marginal, 1)) < 1e-6


def test_verify_point_mass_and_draft_distribution_match_the_target(models) -> None:
    """``verify`` alone, over many draws with fixed logits: the emitted first token ~ p."""
    target, small = models
    torch.manual_seed(0)
    with torch.no_grad():
        logits = target(torch.tensor([[0, 21, 60]]))[:, -1:]  # [1, 1, V]
        q = torch.softmax(small(torch.tensor([[0, 21, 60]]))[0, -1], -1)  # [V]
    V = logits.shape[-1]
    p = torch.softmax(logits[0, 0], -1)
    logits2 = logits.expand(1, 2, V)  # the column after the draft: any logits (bonus token)
    params = SamplingParams(temperature=1.0)
    g = torch.Generator().manual_seed(1)
    counts_point = torch.zeros(V)
    counts_q = torch.zeros(V)
    x_point = int(p.argsort()[-3])  # a token of moderate probability: rejected often
    for _ in range(4000):
        counts_point[verify(logits2, [[x_point]], None, params, [g])[0][0][0]] += 1
        x = int(torch.multinomial(q, 1, generator=g))
        counts_q[verify(logits2, [[x]], q[None, None], params, [g])[0][0][0]] += 1
    assert chi2_pvalue(counts_point, p) > 1e-3
    assert chi2_pvalue(counts_q, p) > 1e-3
    assert chi2_pvalue(counts_q, q) < 1e-6  # the draft's own distribution is rejected


def test_bad_draft_arguments_raise(models) -> None:
    target, _ = models
    other_vocab = Decoder(ModelConfig(vocab_size=64, block_size=48, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="vocabulary"):
        Engine(target, draft=other_vocab)
    short = Decoder(
        ModelConfig(vocab_size=target.config.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    )
    with pytest.raises(ValueError, match="block_size"):
        Engine(target, draft=short)
    with pytest.raises(ValueError, match="draft:"):
        Engine(target, draft="medusa")
    with pytest.raises(ValueError, match="draft_tokens"):
        Engine(target, draft="ngram", draft_tokens=0)
    with pytest.raises(ValueError, match="ngram_max"):
        Engine(target, draft="ngram", ngram_max=0)


def test_speed_gate_turns_drafting_off_while_it_is_slower_and_probes_again() -> None:
    """Fed measured passes: two plain passes first (the first untimed); a window of 8 drafting passes at half the plain
    rate holds drafting back for 16 passes, a 2-pass probe still slower for 32, a faster probe reopens
    it for a full window; a window's rate is its sum (single slow passes do not decide); a plain pass
    follows every 4th won window; a disabled gate always drafts."""
    from lmforge.inference.speculative import SpeedGate

    def drafting(gate: SpeedGate, tokens: list[int]) -> None:
        for t in tokens:
            assert gate.allow()
            gate.record(True, tokens=t, seconds=0.02)

    def plain(gate: SpeedGate, n: int) -> None:
        assert [gate.allow() for _ in range(n)] == [False] * n
        for _ in range(n):
            gate.record(False, tokens=1, seconds=0.01)  # 100 tok/s

    gate = SpeedGate()
    assert [gate.allow(), gate.allow()] == [False, False]  # two plain passes first
    gate.record(False, tokens=1, seconds=5.0)  # the first one paid a one-time setup: not a rate
    gate.record(False, tokens=1, seconds=0.01)
    drafting(gate, [1] * 8)  # 50 tok/s over the window: off for 16
    plain(gate, 16)
    drafting(gate, [1, 1])  # the probe: still slower, off for 32
    plain(gate, 32)
    drafting(gate, [5, 1])  # 150 tok/s: drafting again, a full window to the next decision
    assert gate.backoff == 16 and gate.need == 8
    drafting(gate, [1, 5, 1, 5, 1, 5, 1, 5])  # half the passes emit 1, the window is still faster
    assert gate.allow() and gate.off == 0
    drafting(gate, [3] * 8)  # wins 1 (the probe), 2 and 3 so far: drafting goes on
    drafting(gate, [3] * 8)  # the 4th won in a row is followed by one plain pass
    plain(gate, 1)
    assert gate.allow()
    never_off = SpeedGate(enabled=False)
    for _ in range(20):
        never_off.record(True, tokens=1, seconds=1.0)
        never_off.record(False, tokens=1, seconds=0.001)
    assert all(never_off.allow() for _ in range(20))


def test_a_slow_draft_is_gated_off_and_the_output_is_unchanged(models) -> None:
    """The target drafting for itself costs k target steps per pass; on a machine where that loses to
    plain decoding the gate holds drafting back, and either way the tokens are plain greedy's."""
    target, _ = models
    params = SamplingParams(max_new_tokens=40, temperature=0)
    want = [c.ids for c in plain(target, PROMPTS, params)]
    gated = Engine(target, draft=target, draft_tokens=4)
    always = Engine(target, draft=target, draft_tokens=4, draft_gate=False)
    assert [c.ids for c in gated.generate(PROMPTS, params)] == want
    assert [c.ids for c in always.generate(PROMPTS, params)] == want
    assert gated.stats.drafted <= always.stats.drafted
