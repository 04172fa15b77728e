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
    assert list(cached.values()) == [timings]

    assert choose_cpu_dtype(model, 2, 16, 64, cache=tmp_path / "c.json")[1] == timings  # read back
    assert step_ms(model, 2, 16, 64, "fp32", repeats=1) > 0
