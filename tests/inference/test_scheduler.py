"""Continuous batching: a request's tokens are the same alone (through ``Engine``) or joined into a running
batch at any step (greedy and seeded sampling, n choices, logprobs, stop strings); cancelling stops
generation; bad requests are refused at submit; a failing job does not stop the thread."""

from __future__ import annotations

import threading

import pytest
import torch

from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams
from lmforge.inference.scheduler import Scheduler, Token
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.tokenizer.train import train_bpe

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no".split()
PROMPTS = [[0, 5, 9, 3], [0, 7], [0, 11, 12, 13, 14, 15, 16, 17, 18], [0, 2, 40], [0, 30, 31]]


def build(**overrides) -> Decoder:
    base = {"vocab_size": 64, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 32}
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # wide weights: varied outputs with clear winners (the 0.02 init repeats one token)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


class Collect:
    """A sink gathering every event of one request; ``wait()`` until all ``n`` choices finished."""

    def __init__(self, n: int = 1, on_token=None):
        self.n, self.events, self.done, self.on_token = n, [], threading.Event(), on_token

    def __call__(self, event: Token) -> None:
        self.events.append(event)
        if self.on_token:
            self.on_token(self, event)
        if sum(e.finish_reason is not None for e in self.events) == self.n:
            self.done.set()

    def wait(self) -> Collect:
        assert self.done.wait(30), "request did not finish"
        return self

    def ids(self, index: int = 0) -> list[int]:
        return [e.token for e in self.events if e.index == index and e.token is not None]

    def text(self, index: int = 0) -> str:
        return "".join(e.text for e in self.events if e.index == index)

    def reason(self, index: int = 0) -> str:
        return [e.finish_reason for e in self.events if e.index == index and e.finish_reason][0]


@pytest.fixture
def sched():
    s = Scheduler(build(), max_batch=8).start()
    yield s
    s.stop()


def staggered(s: Scheduler, params: list[SamplingParams], n: int = 1) -> list[Collect]:
    """Submit PROMPTS[0]; each next prompt joins when the previous request has produced 2 tokens."""
    sinks: list[Collect] = []

    def chain(k: int):
        def on_token(sink: Collect, event: Token) -> None:
            if len(sink.events) == 2 and k + 1 < len(PROMPTS):
                sinks.append(Collect(n, chain(k + 1)))
                s.submit(PROMPTS[k + 1], params[k + 1], sinks[-1], n=n)

        return on_token

    sinks.append(Collect(n, chain(0)))
    s.submit(PROMPTS[0], params[0], sinks[0], n=n)
    while len(sinks) < len(PROMPTS):
        sinks[-1].done.wait(0.05)
    return [c.wait() for c in sinks]


def test_greedy_alone_equals_joined_batch(sched: Scheduler) -> None:
    engine = Engine(sched.model)
    params = [SamplingParams(max_new_tokens=10 + 3 * i, temperature=0) for i in range(len(PROMPTS))]
    alone = [engine.generate([p], q)[0] for p, q in zip(PROMPTS, params)]
    got = staggered(sched, params)
    assert [c.ids() for c in got] == [a.ids for a in alone]
    assert [c.reason() for c in got] == [a.finish_reason for a in alone]
    assert sched.stats["max_rows"] >= 3  # the requests really shared the batch


MIXED = [
    SamplingParams(max_new_tokens=12, temperature=1.0, seed=7),
    SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, seed=1),
    SamplingParams(max_new_tokens=14, temperature=0),
    SamplingParams(max_new_tokens=8, temperature=1.3, top_k=5, seed=3),
    SamplingParams(max_new_tokens=11, temperature=1.0, min_p=0.1, seed=11),
]


def test_seeded_sampling_and_n_choices_alone_equal_joined(sched: Scheduler) -> None:
    alone = []
    for prompt, params in zip(PROMPTS, MIXED):  # one at a time: each request has the batch to itself
        c = Collect(2)
        sched.submit(prompt, params, c, n=2)
        alone.append([c.wait().ids(0), c.wait().ids(1)])
    got = staggered(sched, MIXED, n=2)
    assert [[c.ids(0), c.ids(1)] for c in got] == alone
    assert alone[0][0] != alone[0][1]  # choice i samples with seed + i
    assert sched.stats["max_rows"] >= 6


def test_sampling_respects_filters() -> None:
    model = build()
    s = Scheduler(model).start()
    try:
        greedy, top1 = Collect(), Collect()
        s.submit(PROMPTS[0], SamplingParams(max_new_tokens=10, temperature=0), greedy)
        s.submit(PROMPTS[0], SamplingParams(max_new_tokens=10, temperature=1.5, top_k=1, seed=3), top1)
        assert top1.wait().ids() == greedy.wait().ids()
        top3 = Collect()
        params = SamplingParams(max_new_tokens=40, temperature=2.0, top_k=3, seed=0, logprobs=True)
        s.submit(PROMPTS[1], params, top3, top_logprobs=3)
        events = [e for e in top3.wait().events if e.token is not None]
        assert all(e.token in [t for t, _ in e.top_logprobs] for e in events)
        assert len({e.token == e.top_logprobs[0][0] for e in events}) == 2  # not always the top one
    finally:
        s.stop()


def test_logprobs_and_top_logprobs(sched: Scheduler) -> None:
    engine = Engine(sched.model)
    params = SamplingParams(max_new_tokens=6, temperature=0, logprobs=True)
    want = engine.generate([PROMPTS[0]], params)[0]
    c = Collect()
    sched.submit(PROMPTS[0], params, c, top_logprobs=3)
    events = [e for e in c.wait().events if e.token is not None]
    assert [e.token for e in events] == want.ids
    assert [e.logprob for e in events] == pytest.approx(want.logprobs, abs=1e-5)
    for e in events:  # greedy: the chosen token is the most likely alternative
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0][0] == e.token
        assert e.top_logprobs[0][1] == pytest.approx(e.logprob, abs=1e-6)


def test_stop_strings_and_text_match_engine() -> None:
    tok = train_bpe([" ".join(WORDS) * 4, " ".join(reversed(WORDS)) * 4] * 10, vocab_size=300)
    model = build(vocab_size=tok.get_vocab_size())
    engine = Engine(model, tok)
    prompt = tok.encode("the cat").ids
    free = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0))[0]
    stop = free.text[3:5] if len(free.text) >= 5 else "zz"
    params = SamplingParams(max_new_tokens=12, temperature=0, stop=[stop])
    want = engine.generate([prompt], params)[0]
    s = Scheduler(model, tok).start()
    try:
        c = Collect()
        s.submit(prompt, params, c)
        assert c.wait().text() == want.text and c.reason() == want.finish_reason
    finally:
        s.stop()


def test_cancel_stops_generation(sched: Scheduler) -> None:
    handle = None

    def on_token(sink: Collect, event: Token) -> None:
        if len(sink.events) == 3:
            handle.cancel()

    c = Collect(on_token=on_token)
    handle = sched.submit(PROMPTS[0], SamplingParams(max_new_tokens=50, temperature=0), c)
    c.wait()
    assert c.reason() == "cancelled"
    assert len(c.ids()) <= 4  # at most one more step ran after the cancel
    assert sched.stats["cancelled"] == 1
    later = Collect()
    sched.submit(PROMPTS[1], SamplingParams(max_new_tokens=5, temperature=0), later)
    assert len(later.wait().ids()) == 5  # the thread goes on serving


def test_length_limits_and_block_size(sched: Scheduler) -> None:
    c = Collect()
    sched.submit([0] * 60, SamplingParams(max_new_tokens=50, temperature=0), c)
    assert len(c.wait().ids()) == 4 and c.reason() == "length"  # block_size 64
    zero = Collect()
    sched.submit([0, 1], SamplingParams(max_new_tokens=0), zero)
    assert zero.wait().reason() == "length" and zero.ids() == []


def test_stop_ids_end_a_row_without_the_token(sched: Scheduler) -> None:
    engine = Engine(sched.model)
    outs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0))
    # a prompt whose greedy output has a token not seen before it, and where that token comes
    k, cut = next((k, i) for k, c in enumerate(outs) for i, t in enumerate(c.ids) if t not in c.ids[:i] and i)
    free = outs[k]
    params = SamplingParams(max_new_tokens=8, temperature=0, stop_ids={free.ids[cut]})
    c = Collect()
    sched.submit(PROMPTS[k], params, c)
    assert c.wait().ids() == free.ids[:cut] and c.reason() == "stop"


def test_bad_requests_are_refused_at_submit(sched: Scheduler) -> None:
    sink = Collect()
    for prompt, params, n, match in [
        ([], SamplingParams(), 1, "at least one token"),
        ([0, 64], SamplingParams(), 1, "outside the vocabulary"),
        ([0, -1], SamplingParams(), 1, "outside the vocabulary"),
        ([0] * 64, SamplingParams(), 1, "context holds 63"),
        ([0], SamplingParams(temperature=-1), 1, "temperature"),
        ([0], SamplingParams(), 0, "n: expected"),
        ([0], SamplingParams(stop=["x"]), 1, "tokenizer"),
    ]:
        with pytest.raises(ValueError, match=match):
            sched.submit(prompt, params, sink, n=n)


def test_jobs_run_on_the_model_thread_and_failures_are_returned(sched: Scheduler) -> None:
    assert sched.run(lambda: threading.current_thread().name).result(10) == "lmforge-scheduler"

    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sched.run(boom).result(10)
    c = Collect()
    sched.submit(PROMPTS[0], SamplingParams(max_new_tokens=3, temperature=0), c)
    assert len(c.wait().ids()) == 3


def test_many_requests_beyond_max_batch_all_finish() -> None:
    model = build()
    engine = Engine(model)
    s = Scheduler(model, max_batch=3).start()
    try:
        params = SamplingParams(max_new_tokens=6, temperature=0)
        sinks = [Collect() for _ in range(10)]
        for i, c in enumerate(sinks):
            s.submit(PROMPTS[i % len(PROMPTS)], params, c)
        want = [engine.generate([PROMPTS[i % len(PROMPTS)]], params)[0].ids for i in range(10)]
        assert [c.wait().ids() for c in sinks] == want
        assert s.stats["max_rows"] == 3
    finally:
        s.stop()
