"""Tests for decoding through ``Decoder.forward`` with ``DecodeWeights`` beyond the engine's token-for-token
tests: the padding-free path and the ragged path give the same logits, the prepared matrices give the
decoder's own logits, and the opt-in int8 weights stay close to the exact model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.decode_weights import DecodeWeights
from lmforge.model.decoder import Decoder


def build(**overrides) -> Decoder:
    base = {"vocab_size": 96, "block_size": 48, "n_layer": 2, "n_head": 4, "n_embd": 64}
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**{**base, **overrides})).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(20)
    return model


@torch.no_grad()
def decode_logits(w: DecodeWeights, prompts: torch.Tensor, pad: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits ``[steps, B, V]`` of greedy decoding with ``w`` (prefill, then one token a step)."""
    model = w.model
    cache = model.new_kv_cache(len(pad), prompts.shape[1] + steps, pad=pad)
    w.refresh()
    logits = model(prompts, cache, weights=w, last_only=True)[:, -1]
    out = []
    for _ in range(steps):
        out.append(logits)
        logits = model(logits.argmax(-1)[:, None], cache, weights=w)[:, -1]
    return torch.stack(out)


@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 2, "qk_norm": True, "bias": True}], ids=str)
def test_unpadded_fast_path_equals_the_masked_path(overrides: dict) -> None:
    """A row with no padding gives the same logits alone (no mask, sliced positions) as next to a
    padded row (per-row positions, boolean mask)."""
    model = build(**overrides)
    fwd = DecodeWeights(model)
    prompt = torch.tensor([[3, 9, 4, 1, 7, 2]])
    alone = decode_logits(fwd, prompt, torch.tensor([0]), 6)[:, 0]
    ragged = torch.tensor([[3, 9, 4, 1, 7, 2], [0, 0, 0, 5, 6, 8]])
    together = decode_logits(fwd, ragged, torch.tensor([0, 3]), 6)[:, 0]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-4)


def test_int8_weights_are_quantised_and_close_to_exact() -> None:
    model = build()
    exact, int8 = DecodeWeights(model), DecodeWeights(model, weights="int8")
    int8.refresh()
    assert all(
        m.w8 is not None for layer in int8.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)
    )
    assert int8.head is not None and int8.head.w8 is not None
    prompts, pad = torch.tensor([[3, 9, 4, 1, 7, 2], [0, 0, 0, 5, 6, 8]]), torch.tensor([0, 3])
    a, b = decode_logits(exact, prompts, pad, 1), decode_logits(int8, prompts, pad, 1)
    assert not torch.equal(a, b)  # it is a different computation ...
    assert ((a - b).norm() / a.norm()).item() < 0.02  # ... within 2% of the exact logits
    same = Engine(model).generate(prompts.tolist(), SamplingParams(max_new_tokens=8, temperature=0))
    near = Engine(model, weights="int8").generate(
        prompts.tolist(), SamplingParams(max_new_tokens=8, temperature=0)
    )
    assert sum(x == y for s, n in zip(same, near) for x, y in zip(s.ids, n.ids)) >= 12  # of 16


def test_int8_keeps_widths_the_kernel_cannot_take_and_rejects_unknown_formats() -> None:
    model = build(n_embd=40, n_head=2)  # input width 40 is not a multiple of 16
    fwd = DecodeWeights(model, weights="int8").refresh()
    assert fwd.layers[0].qkv.w8 is None and fwd.layers[0].qkv.w is not None
    out = Engine(model, weights="int8").generate([[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=0))
    exact = Engine(model).generate([[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=0))
    assert len(out[0].ids) == 4 and out[0].ids[:1] == exact[0].ids[:1]
    with pytest.raises(ValueError, match="weights"):
        DecodeWeights(model, weights="int4")


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 40])
def test_cpu_fp32_matmul_paths_equal_f_linear(rows: int, bias: bool) -> None:
    """The exact fp32 CPU matmul takes ``_few_rows`` (<= FEW_ROWS rows), else F.linear on the first
    call and oneDNN's prepacked linear from the second on; every path gives ``F.linear``'s product and
    ``residual + product`` to fp32 rounding."""
    from lmforge.model.decode_weights import FEW_ROWS, Matmul, _onednn_linear

    torch.manual_seed(rows)
    w, b = torch.randn(72, 48), torch.randn(72) if bias else None
    x, residual = torch.randn(rows, 48), torch.randn(rows, 72)
    mm = Matmul(w, b, int8=False)
    want = F.linear(x, w, b)
    for _ in range(3):  # the first wide call is plain, the second packs, the third uses the packing
        torch.testing.assert_close(mm(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mm.add(x, residual), residual + want, rtol=1e-5, atol=1e-5)
    assert (mm.packed is not None) == (rows > FEW_ROWS and _onednn_linear())
    # a non-contiguous input (a column slice, as after a split) is taken as well
    wide = torch.randn(rows, 96)
    torch.testing.assert_close(mm(wide[:, ::2]), F.linear(wide[:, ::2], w, b), rtol=1e-5, atol=1e-5)
    assert mm(x).shape == (rows, 72) and mm(x).is_contiguous()


def test_onednn_is_found_on_this_torch() -> None:
    """The CPU build the project pins ships oneDNN, so the fast path is not silently off here."""
    from lmforge.model.decode_weights import _onednn_linear

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN (the engine falls back to F.linear)")
    assert _onednn_linear()


@pytest.mark.parametrize(
    "overrides", [{"qkv_bias": True}, {"mlp": "geglu", "scale_emb": True, "norm_eps": 1e-6}], ids=str
)
def test_prepared_weights_equal_the_decoder_for_imported_families(overrides: dict) -> None:
    """Qwen2's q/k/v-only biases and Gemma's GeGLU MLP and scaled embeddings: the engine's forward gives
    the decoder's own logits, prefill and every cached step."""
    model = build(**overrides)
    prompts = torch.tensor([[3, 9, 4, 1, 7, 2]])
    steps = decode_logits(DecodeWeights(model), prompts, torch.tensor([0]), 4)  # [4, 1, V]
    seq = torch.cat([prompts, steps[:-1, 0].argmax(-1)[None]], dim=1)  # the greedy path, [1, 9]
    with torch.no_grad():
        full = model(seq)[0, prompts.shape[1] - 1 :]  # [4, V]
    torch.testing.assert_close(steps[:, 0], full, rtol=1e-4, atol=1e-4)
