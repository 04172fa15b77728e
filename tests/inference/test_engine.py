"""Tests for the generation engine: cached greedy equals uncached greedy (batch 1 and ragged batches),
sampling controls (top-k=1 is greedy, seeds reproduce, min-p, repetition penalty), stop tokens and
strings, limits, streaming."""

from __future__ import annotations

import pytest
import torch

from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.tokenizer.train import train_bpe

CASES = [
    {"pos": "rope"},
    {"pos": "rope", "n_kv_head": 2, "qk_norm": True, "bias": True},
    {"pos": "alibi", "n_kv_head": 1, "norm": "layernorm"},
    {"pos": "learned", "mlp": "gelu", "tie_embeddings": False},
    {"pos": "sinusoidal", "mlp": "relu2"},
]
PROMPTS = [[0, 5, 9, 3], [0, 7], [0, 11, 12, 13, 14, 15, 16, 17, 18], [0, 2, 40]]


def build(vocab: int = 64, **overrides) -> Decoder:
    base = {"vocab_size": vocab, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32}
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy has clear winners
        model.tok_emb.weight.mul_(20)
    return model


@torch.no_grad()
def uncached_greedy(model: Decoder, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_cached_greedy_equals_uncached_batch1_and_ragged(overrides: dict) -> None:
    model = build(**overrides)
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=12, temperature=0)
    expected = [uncached_greedy(model, p, 12) for p in PROMPTS]
    assert [c.ids for c in engine.generate(PROMPTS[:1], params)] == expected[:1]
    assert [c.ids for c in engine.generate(PROMPTS, params)] == expected


def test_top_k_one_is_greedy() -> None:
    engine = Engine(build())
    greedy = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0))
    top1 = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=1.5, top_k=1, seed=3))
    assert [c.ids for c in top1] == [c.ids for c in greedy]


def test_seeds_reproduce_and_rows_do_not_depend_on_batch_mates() -> None:
    engine = Engine(build())
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=7)
    a = [c.ids for c in engine.generate(PROMPTS, params)]
    assert a == [c.ids for c in engine.generate(PROMPTS, params)]
    other = [
        c.ids for c in engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.0, seed=8))
    ]
    assert other != a
    alone = engine.generate(PROMPTS[:1], params)[0].ids  # row 0 uses seed + 0 in both calls
    assert alone == a[0]


def test_stop_token_ends_row_and_is_excluded() -> None:
    engine = Engine(build())
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0))
    stop = free[0].ids[3]
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0, stop_ids={stop}))
    first = free[0].ids.index(stop)
    assert out[0].ids == free[0].ids[:first] and out[0].finish_reason == "stop"
    for f, o in zip(free, out):  # every row is cut at its first stop token, or runs to the limit
        cut = f.ids.index(stop) if stop in f.ids else len(f.ids)
        assert o.ids == f.ids[:cut]


@pytest.fixture(scope="module")
def tok():
    text = ["the cat sat on the mat and the dog ran to the park " * 3, "a b c d e f g h i j k l m n o p"] * 20
    return train_bpe(text, vocab_size=300)


def test_stop_strings_cut_the_text_and_streaming_matches(tok) -> None:
    model = build(vocab=tok.get_vocab_size())
    engine = Engine(model, tok)
    prompts = [tok.encode("the cat").ids, tok.encode("a b c d e").ids]
    params = SamplingParams(max_new_tokens=24, temperature=0)
    free = engine.generate(prompts, params)
    assert free[0].text == tok.decode(free[0].ids, skip_special_tokens=False)
    stop = free[0].text[5:8]
    cut = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0, stop=[stop]))
    assert cut[0].text == free[0].text[: free[0].text.find(stop)]
    assert cut[0].finish_reason == "stop"
    streamed = [""] * len(prompts)
    for event in engine.stream(prompts, SamplingParams(max_new_tokens=24, temperature=0, stop=[stop])):
        streamed[event.row] += event.text
        assert stop not in streamed[event.row]
    assert streamed == [c.text for c in cut]


def test_limits_max_tokens_and_block_size() -> None:
    engine = Engine(build())
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, temperature=0))
    assert all(len(c.ids) == 5 and c.finish_reason == "length" for c in out)
    long = engine.generate([list(range(1, 30))], SamplingParams(max_new_tokens=50, temperature=0))[0]
    assert len(long.ids) == 32 - 29  # stops at block_size
    cropped = engine.generate([list(range(1, 60))], SamplingParams(max_new_tokens=4, temperature=0))[0]
    assert cropped.prompt_tokens == 31 and len(cropped.ids) == 1  # last block_size - 1 tokens, then one


def test_repetition_penalty_and_min_p_change_greedy_and_sampling() -> None:
    engine = Engine(build())
    plain = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=20, temperature=0))[0].ids
    penalised = engine.generate(
        PROMPTS[:1], SamplingParams(max_new_tokens=20, temperature=0, repetition_penalty=1e6)
    )[0].ids
    assert len(set(penalised)) == len(penalised) and not set(penalised) & set(PROMPTS[0])
    assert len(set(plain)) < len(plain) or plain != penalised
    # min_p = 1 keeps only the top token: greedy at any temperature
    mp = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=2.0, min_p=1.0, seed=1))
    greedy = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0))
    assert [c.ids for c in mp] == [c.ids for c in greedy]


def test_model_mode_restored_and_bad_args_raise() -> None:
    model = build().train()
    engine = Engine(model)
    engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2, temperature=0))
    assert model.training
    with pytest.raises(ValueError, match="prompts"):
        engine.stream([[]], SamplingParams())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.stream([[999]], SamplingParams())
    with pytest.raises(ValueError, match="min_p"):
        engine.stream([[1]], SamplingParams(min_p=2.0))
    with pytest.raises(ValueError, match="tokenizer"):
        engine.stream([[1]], SamplingParams(stop=["x"]))


class WrappedLinear(torch.nn.Linear):
    """A projection that is not a plain ``nn.Linear`` (as a LoRA wrapper): the engine must call it."""


@pytest.mark.parametrize("overrides", [{"pos": "rope", "qk_norm": True}, {"pos": "learned"}], ids=str)
def test_wrapped_projections_take_the_module_path(overrides: dict) -> None:
    model = build(**overrides)
    for block in model.blocks:
        for owner, name in ((block.attn, "q_proj"), (block.attn, "k_proj"), (block.mlp, "gate_proj")):
            old = getattr(owner, name)
            new = WrappedLinear(old.in_features, old.out_features, bias=old.bias is not None)
            new.load_state_dict(old.state_dict())
            setattr(owner, name, new)
    out = Engine(model).generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0))
    assert [c.ids for c in out] == [uncached_greedy(model, p, 8) for p in PROMPTS]


def test_fused_weights_follow_parameter_updates() -> None:
    model = build()
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    engine.generate(PROMPTS, params)
    with torch.no_grad():
        for p in model.blocks.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # in place, as an optimiser step
    assert [c.ids for c in engine.generate(PROMPTS, params)] == [
        uncached_greedy(model, p, 8) for p in PROMPTS
    ]


def test_lora_applied_after_the_engine_is_made_is_used() -> None:
    from lmforge.model.lora import LoraConfig, apply_lora

    model = build()
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    engine.generate(PROMPTS, params)
    apply_lora(model, LoraConfig(r=4, targets=("q_proj", "v_proj", "gate_proj", "o_proj")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a non-zero update, so the adapter changes the outputs
    assert [c.ids for c in engine.generate(PROMPTS, params)] == [
        uncached_greedy(model, p, 8) for p in PROMPTS
    ]


def test_logprobs_are_the_model_log_probabilities_of_the_tokens() -> None:
    model = build()
    out = Engine(model).generate(
        PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.8, seed=0, logprobs=True)
    )
    for prompt, c in zip(PROMPTS, out):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + c.ids]))[0], dim=-1)  # [T, V]
        expected = [logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(c.ids)]
        assert c.logprobs == pytest.approx(expected, abs=1e-4)


def test_rows_finishing_early_leave_the_batch_without_changing_the_others() -> None:
    engine = Engine(build())
    base = dict(max_new_tokens=14, temperature=0.9, top_k=20, repetition_penalty=1.3, logprobs=True)
    free = engine.generate(PROMPTS, SamplingParams(seed=5, **base))
    stop = {free[0].ids[2], free[2].ids[6]}  # rows stop at different steps, so the batch shrinks
    batched = engine.generate(PROMPTS, SamplingParams(seed=5, stop_ids=stop, **base))
    assert len({len(c.ids) for c in batched}) > 1
    for i, prompt in enumerate(PROMPTS):  # row i draws from seed + i, alone or in the batch
        alone = engine.generate([prompt], SamplingParams(seed=5 + i, stop_ids=stop, **base))[0]
        assert alone.ids == batched[i].ids and alone.finish_reason == batched[i].finish_reason
        assert alone.logprobs == pytest.approx(batched[i].logprobs, abs=1e-4)


def test_a_row_finishing_at_the_context_limit_leaves_before_it_overflows() -> None:
    """A long prompt ends at block_size while most rows go on: it must leave, not be fed past the
    context (this raised ``a row reaches position 33 > block_size 32`` before)."""
    model = build()
    prompts = [[0] + [5] * 29] + [[0, 1]] * 4
    params = SamplingParams(max_new_tokens=20, temperature=0)
    out = Engine(model).generate(prompts, params)
    assert [(len(c.ids), c.finish_reason) for c in out] == [(2, "length")] + [(20, "length")] * 4
    for p, c in zip(prompts, out):
        assert c.ids == Engine(model).generate([p], params)[0].ids


def test_a_row_stopped_by_a_stop_token_near_the_context_end_does_not_overrun_it() -> None:
    # Found by the code-generation recipe: a long prompt stopped by a stop token stays in the batch
    # (fewer than a quarter of the rows finished) and was fed past block_size, which raised.
    tok = train_bpe(["abc def ghi jkl mno pqr stu vwx yz"] * 20, vocab_size=300)
    torch.manual_seed(8)
    model = Decoder(
        ModelConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, n_embd=16)
    )
    params = SamplingParams(max_new_tokens=28, temperature=1.0, seed=8, stop_ids=frozenset(range(280, 320)))
    prompts = [list(range(5, 29))] + [list(range(5, 9))] * 7
    out = Engine(model.eval(), tok).generate(prompts, params)
    assert out[0].finish_reason in ("stop", "length")
    assert all(len(p) + len(c.ids) <= 32 for p, c in zip(prompts, out))
