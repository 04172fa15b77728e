"""The matmul peak behind MFU: never a cached zero, at least three timed runs, raised when a run beats it."""

from __future__ import annotations

import json

import pytest

from lmforge.training import flops


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(flops, "CACHE", tmp_path / "matmul_peak.json")
    return tmp_path / "matmul_peak.json"


def test_a_failed_measurement_is_not_cached(cache, monkeypatch) -> None:
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda device, dtype: 0.0)
    assert flops.matmul_peak("cpu", "bf16") == 0.0 and not cache.exists()
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda device, dtype: 5e10)
    assert flops.matmul_peak("cpu", "bf16") == 5e10  # measured again, then cached
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda device, dtype: 1.0)
    assert flops.matmul_peak("cpu", "bf16") == 5e10


def test_a_slow_dtype_still_gets_timed_runs() -> None:
    # a budget shorter than one matmul: the old loop timed nothing and returned 0.0
    assert flops.measure_matmul_peak("cpu", "fp32", n=256, seconds=0.0) > 0


def test_a_run_faster_than_the_cached_peak_raises_it(cache, monkeypatch) -> None:
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda device, dtype: 4e10)
    peak = flops.matmul_peak("cpu", "fp32")
    assert flops.raise_peak("cpu", "fp32", 3e10, peak) == 4e10  # below the peak: unchanged
    assert flops.raise_peak("cpu", "fp32", 6e10, peak) == 6e10  # MFU against it is 1, not 1.5
    assert max(json.loads(cache.read_text()).values()) == 6e10
    assert flops.matmul_peak("cpu", "fp32") == 6e10
    assert flops.raise_peak("cpu", "fp32", 1.6e11, 1.2e11, ranks=2) == 1.6e11  # two ranks together
    assert flops.matmul_peak("cpu", "fp32") == 8e10  # cached per rank
