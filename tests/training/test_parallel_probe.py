"""``procs: auto`` and ``optimizer: auto`` choose by measurement (fake timings here): processes or threads,
Muon or AdamW, and the choices land in the stage's manifest."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.cli import main
from lmforge.training import layout, precision
from lmforge.training.layout import choose_procs
from lmforge.training.precision import choose_optimizer


def test_processes_win_only_when_measurably_faster(tmp_path) -> None:
    def pick(threads: float, procs: float, cores: int = 2) -> int:
        timer = {"threads": threads, "procs": procs}.get
        return choose_procs(cores, timer, "shape", timer=timer, cache=tmp_path / "c.json")[0]

    assert pick(140.0, 100.0) == 2  # small matmuls: 2 single-thread ranks beat one 2-thread process
    assert pick(100.0, 140.0) == 1  # large matmuls: threads split them well, no all-reduce
    assert pick(100.0, 95.0) == 1  # within the 10% margin: one process (no spawn, one model copy)
    assert pick(140.0, 100.0, cores=4) == 4
    assert pick(140.0, 100.0, cores=1) == 1  # one core: nothing to choose, nothing measured
    assert not (tmp_path / "c.json").exists()  # fake timings are never cached


def test_a_measured_layout_is_cached_per_machine_and_shape(tmp_path) -> None:
    calls: list[str] = []

    def measure(layout: str) -> float:
        calls.append(layout)
        return {"threads": 80.0, "procs": 50.0}[layout]

    cache = tmp_path / "c.json"
    assert choose_procs(2, measure, "a", cache=cache) == (
        2,
        {"probe_layout_threads_ms": 80.0, "probe_layout_procs_ms": 50.0},
    )
    assert choose_procs(2, measure, "a", cache=cache)[0] == 2 and calls == ["threads", "procs"]  # read back
    choose_procs(2, measure, "b", cache=cache)  # another shape is measured anew
    assert calls == ["threads", "procs"] * 2 and len(json.loads(cache.read_text())) == 2


def test_muon_is_kept_while_its_newton_schulz_work_is_cheap_beside_the_pass() -> None:
    # issue 24's AVX2-only CPU: Muon's step cost ~5x the forward + backward
    assert choose_optimizer(100.0, 500.0)[0] == "adamw"
    # an avx512_bf16 CPU: the shakespeare model's 3 iterations, 2 ranks, a fraction of the pass
    kind, record = choose_optimizer(170.0, 40.0, ranks=2)
    assert kind == "muon" and record["muon_cost"] == pytest.approx(40.0 / 2 / 170.0)
    assert record["optimizer_muon"] == 1.0 and record["probe_fwd_bwd_ms"] == 170.0
    # the work is shared out over the ranks (ShardedMuon): 2 ranks halve each rank's share
    assert choose_optimizer(100.0, 150.0, ranks=1)[0] == "adamw"
    assert choose_optimizer(100.0, 150.0, ranks=2)[0] == "muon"


def test_build_optimizers_auto_falls_back_to_adamw_at_the_measured_precision(monkeypatch) -> None:
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder
    from lmforge.training.muon import ShardedMuon
    from lmforge.training.optim import build_optimizers

    ns = {"probe_ns_fp32_ms": 30.0, "probe_ns_bf16_ms": 900.0}  # bf16 slow: fp32 chosen, and it is cheap
    monkeypatch.setattr(precision, "choose_ns_dtype", lambda shapes, steps: ("fp32", dict(ns)))
    model = Decoder(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))
    kept = build_optimizers(model, "auto", 1e-3, 0.1, ns_dtype="auto", fwd_bwd_ms=100.0)
    assert isinstance(kept[0], ShardedMuon) and kept[0].ns_dtype == torch.float32
    assert kept[0].probe["muon_cost"] == pytest.approx(0.3) and kept[0].probe["optimizer_muon"] == 1.0

    # forced to torch's bf16, the same work costs 9x the pass: AdamW alone
    dropped = build_optimizers(model, "auto", 1e-3, 0.1, ns_dtype="bf16", fwd_bwd_ms=100.0)
    assert len(dropped) == 1 and isinstance(dropped[0], torch.optim.AdamW)
    assert dropped[0].probe["muon_cost"] == pytest.approx(9.0) and dropped[0].probe["optimizer_muon"] == 0.0
    with pytest.raises(ValueError, match="fwd_bwd_ms"):
        build_optimizers(model, "auto", 1e-3, 0.1)


def test_the_auto_choices_land_in_the_manifest(tokenizer_dir, tmp_path, monkeypatch) -> None:
    """One 2-thread process measured faster than 2 ranks: it trains the same global batch (2 x 3 rows)
    on 2 threads; Muon measured too dear: AdamW alone. The manifest keeps ``auto`` in the config and the
    choices with their timings in the metrics."""
    monkeypatch.setattr(precision, "CACHE", tmp_path / "probe.json")  # fake timings stay out of the cache
    layouts: list[tuple] = []

    def fake_layout(layout, cores, mcfg, rows, optim, dtype) -> float:
        layouts.append((layout, cores, rows, optim["kind"], dtype))
        return {"threads": 60.0, "procs": 90.0}[layout]

    monkeypatch.setattr(layout, "layout_step_ms", fake_layout)
    monkeypatch.setattr(precision, "fwd_bwd_ms", lambda *args: 10.0)
    monkeypatch.setattr(
        precision,
        "choose_ns_dtype",
        lambda shapes, steps: ("fp32", {"probe_ns_fp32_ms": 50.0, "probe_ns_bf16_ms": 900.0}),
    )
    args = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=16"]
    assert (
        main(
            [
                "pretrain",
                f"--tokenizer={tokenizer_dir}",
                f"--out={tmp_path / 'run'}",
                *args,
                "--batch_size=3",
                "--max_steps=2",
                "--warmup_steps=0",
                "--eval_tokens=64",
                "--procs=auto",
                "--threads=2",
                "--optimizer=auto",
                "--dtype=fp32",
                "--device=cpu",
                "-q",
            ]
        )
        == 0
    )
    assert layouts == [("threads", 2, 3, "auto", "fp32"), ("procs", 2, 3, "auto", "fp32")]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (manifest["config"]["procs"], manifest["config"]["optimizer"]) == ("auto", "auto")
    m = manifest["metrics"]
    assert (m["procs"], m["threads"], m["batch_size"], m["world_size"]) == (1, 2, 6, 1)
    assert (m["probe_layout_threads_ms"], m["probe_layout_procs_ms"]) == (60.0, 90.0)
    assert (m["optimizer_muon"], m["muon_cost"], m["ns_bf16"]) == (0.0, 5.0, 0.0)
    assert m["tokens"] == 2 * 6 * 16  # two steps of the 6-row global batch


def tiny_config():
    from lmforge.model.config import ModelConfig

    return ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)


OPTIM = {"kind": "muon", "lr": 1e-3, "weight_decay": 0.1, "ns_steps": 3, "ns_dtype": "fp32"}


def test_the_threads_layout_is_timed_in_process_and_puts_the_process_back() -> None:
    rng = torch.get_rng_state()
    assert layout.layout_step_ms("threads", 1, tiny_config(), 2, OPTIM, "fp32") > 0
    assert torch.get_num_threads() == 1 and torch.equal(rng, torch.get_rng_state())


@pytest.mark.slow
def test_the_procs_layout_is_timed_on_real_local_ranks(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))  # the ranks' own dtype / Newton-Schulz probes
    assert layout.layout_step_ms("procs", 2, tiny_config(), 2, {**OPTIM, "kind": "auto"}, "auto") > 0
