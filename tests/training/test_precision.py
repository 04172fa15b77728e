"""dtype: auto on a CPU picks the faster precision for the model by measurement (fake timings here)."""

from __future__ import annotations

import json

import torch

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.training.precision import choose_cpu_dtype, step_ms


def tiny() -> Decoder:
    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))


def test_the_faster_precision_wins_and_ties_stay_exact(tmp_path) -> None:
    model = tiny()

    def pick(fp32: float, bf16: float) -> str:
        return choose_cpu_dtype(
            model, 4, 16, 64, timer={"fp32": fp32, "bf16": bf16}.get, cache=tmp_path / "c.json"
        )[0]

    assert pick(100.0, 40.0) == "bf16"  # AMX / avx512_bf16: bf16 autocast pays
    assert pick(100.0, 3000.0) == "fp32"  # AVX2 only: bf16 ~30x slower
    assert pick(100.0, 95.0) == "fp32"  # within the 10% margin: fp32 is exact
    assert not (tmp_path / "c.json").exists()  # fake timings are never cached


def test_a_real_probe_is_cached_and_leaves_the_model_alone(tmp_path) -> None:
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    dtype, timings = choose_cpu_dtype(model, 2, 16, 64, cache=tmp_path / "c.json")
    assert dtype in ("fp32", "bf16") and timings["probe_fp32_ms"] > 0 and timings["probe_bf16_ms"] > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in model.parameters())
    cached = json.loads((tmp_path / "c.json").read_text())
    (entry,) = cached.values()  # the timings and the load they were measured at (runtime.stale)
    assert entry.pop("load_per_core") >= 0 and entry == timings

    assert choose_cpu_dtype(model, 2, 16, 64, cache=tmp_path / "c.json")[1] == timings  # read back
    assert step_ms(model, 2, 16, 64, "fp32", repeats=1) > 0


def test_newton_schulz_precision_is_chosen_by_timing_and_fp32_orthogonalises_alike(
    tmp_path, monkeypatch
) -> None:
    """Muon's Newton–Schulz runs in the faster precision (torch hard-codes bf16, ~30x slower on a CPU
    without bf16 matmuls); the fp32 iterations give the same near-orthogonal matrix."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from lmforge.training import precision
    from lmforge.training.muon import ShardedMuon, newton_schulz
    from lmforge.training.optim import build_optimizers
    from lmforge.training.precision import choose_ns_dtype

    def pick(fp32: float, bf16: float) -> str:
        return choose_ns_dtype([(96, 32)], timer={"fp32": fp32, "bf16": bf16}.get, cache=tmp_path / "n.json")[
            0
        ]

    assert (pick(100.0, 40.0), pick(100.0, 3000.0), pick(100.0, 95.0)) == ("bf16", "fp32", "fp32")

    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(1))
    coeffs = (3.4445, -4.775, 2.0315)
    assert torch.equal(
        newton_schulz(g), _zeropower_via_newtonschulz(g, coeffs, 5, 1e-7)
    )  # torch's, bit for bit
    x = newton_schulz(g, dtype=torch.float32)
    assert x.dtype == torch.float32 and x.shape == g.shape
    s = torch.linalg.svdvals(x)
    assert 0.5 < s.min() and s.max() < 1.5  # what the quintic iteration promises (torch's docstring)
    assert (x - newton_schulz(g).float()).abs().max() < 0.05

    # the optimiser runs its iterations in the chosen precision
    p = torch.nn.Parameter(torch.randn(32, 96))
    p.grad = torch.randn(32, 96)
    kw = dict(lr=0.02, weight_decay=0.0, adjust_lr_fn="match_rms_adamw", ns_steps=5)
    q = torch.nn.Parameter(p.detach().clone())
    q.grad = p.grad.clone()
    ShardedMuon([p], ns_dtype="fp32", **kw).step()
    ShardedMuon([q], **kw).step()
    assert not torch.equal(p, q) and torch.allclose(p, q, atol=2e-3)

    # build_optimizers(ns_dtype="auto") measures on the model's Muon matrices, records the choice, caches it
    monkeypatch.setattr(precision, "CACHE", tmp_path / "probe.json")
    muon, _adamw = build_optimizers(tiny(), "muon", 1e-3, 0.1, ns_dtype="auto")
    assert muon.ns_dtype in (torch.float32, torch.bfloat16)
    assert muon.probe["ns_bf16"] == float(muon.ns_dtype == torch.bfloat16)
    assert muon.probe["probe_ns_fp32_ms"] > 0 and muon.probe["probe_ns_bf16_ms"] > 0
    assert (tmp_path / "probe.json").is_file()
