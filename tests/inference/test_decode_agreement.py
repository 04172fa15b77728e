"""One decode path: a seeded ``Engine`` call (``lmforge generate``) and seeded requests to the serving
``Scheduler`` give the same tokens, token for token, and speculative decoding at temperature 0 gives
plain greedy decoding's tokens. All three run the decoder's one forward and ``sampling.sample``."""

from __future__ import annotations

import threading

import pytest
import torch

from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams
from lmforge.inference.scheduler import Scheduler, Token
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder

PROMPTS = [[1, 5, 9, 2, 7], [3, 3], [4, 8, 15, 16, 23, 42, 11], [6]]


def build(**overrides) -> Decoder:
    base = {"vocab_size": 64, "block_size": 48, "n_layer": 2, "n_head": 4, "n_embd": 32}
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # a spread of likely tokens: flat enough that sampling differs by seed
        model.tok_emb.weight.mul_(4)
    return model


def scheduled(model: Decoder, requests: list[tuple[list[int], SamplingParams, int]]) -> list[list[int]]:
    """Token ids of every choice of ``requests`` (prompt, params, n), all admitted in one batch."""
    sched = Scheduler(model, max_batch=16)
    outs: list[list[list[int]]] = [[[] for _ in range(n)] for _, _, n in requests]
    left = [sum(n for _, _, n in requests)]
    done = threading.Event()

    def sink_for(r: int):
        def sink(t: Token) -> None:
            if t.token is not None:
                outs[r][t.index].append(t.token)
            if t.finish_reason is not None:
                assert t.finish_reason == "length", t
                left[0] -= 1
                if not left[0]:
                    done.set()

        return sink

    for r, (prompt, params, n) in enumerate(requests):  # queued before the thread starts: one admission
        sched.submit(prompt, params, sink_for(r), n=n)
    sched.start()
    try:
        assert done.wait(60)
    finally:
        sched.stop()
    return [ids for choices in outs for ids in choices]


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 1.0},
        {"temperature": 0.8, "top_k": 20, "top_p": 0.9},
        {"temperature": 1.3, "min_p": 0.05},
    ],
    ids=str,
)
def test_seeded_engine_equals_seeded_scheduler(settings: dict) -> None:
    """Engine row i draws with seed + i; the same prompts sent as requests seeded seed + i, batched
    together by the scheduler, give the same tokens. Different seeds give different tokens (so the
    agreement is not that of greedy decoding)."""
    model = build()
    params = SamplingParams(max_new_tokens=12, seed=11, **settings)
    engine = [c.ids for c in Engine(model).generate(PROMPTS, params)]
    requests = [
        (p, SamplingParams(max_new_tokens=12, seed=11 + i, **settings), 1) for i, p in enumerate(PROMPTS)
    ]
    assert scheduled(model, requests) == engine
    other = Engine(model).generate(PROMPTS, SamplingParams(max_new_tokens=12, seed=12, **settings))
    assert [c.ids for c in other] != engine
    assert all(len(ids) == 12 for ids in engine)


def test_n_choices_equal_the_engine_on_repeated_prompts() -> None:
    """A request for n choices of one prompt (choice i seeded seed + i) equals an engine call on the
    prompt repeated n times."""
    model = build(pos="alibi")  # another position scheme through the same path
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    engine = [c.ids for c in Engine(model).generate([PROMPTS[0]] * 3, params)]
    assert scheduled(model, [(PROMPTS[0], params, 3)]) == engine
    assert len({tuple(ids) for ids in engine}) > 1  # the choices differ from each other


@pytest.mark.parametrize("draft", ["ngram", "model"])
def test_speculative_at_temperature_zero_equals_greedy(draft: str) -> None:
    """Drafted and verified decoding at temperature 0 emits plain greedy decoding's tokens (ragged batch)."""
    model = build()
    params = SamplingParams(max_new_tokens=16, temperature=0)
    plain = [c.ids for c in Engine(model).generate(PROMPTS, params)]
    small = build(n_layer=1, n_embd=16, n_head=2) if draft == "model" else "ngram"
    spec = Engine(model, draft=small, draft_tokens=3, draft_gate=False)
    assert [c.ids for c in spec.generate(PROMPTS, params)] == plain
    assert spec.stats.drafted > 0
