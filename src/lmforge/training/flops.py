"""Model FLOPs utilisation: the machine's measured matmul peak, cached, and MFU from tokens/s.

MFU (Chowdhery et al. 2022, PaLM, appendix B) = achieved model FLOPs per second / peak FLOPs per
second. The peak is not a datasheet number: it is measured once on this machine with large square
matmuls in the training dtype and the current thread count (the best of several timed runs, at least
three however slow the dtype is), then cached in ``~/.cache/lmforge/matmul_peak.json`` keyed by CPU/GPU
model, threads, dtype and torch version. A zero is never cached. A measurement taken on a busy machine
is low; when a training run then achieves more model FLOP/s than the cached peak, ``raise_peak`` stores
the achieved rate as the new peak, so MFU never exceeds 1.
"""

from __future__ import annotations

import logging
import time

from lmforge.runtime import CACHE_DIR, machine_key, read_cache, write_cache

log = logging.getLogger(__name__)

CACHE = CACHE_DIR / "matmul_peak.json"


def measure_matmul_peak(
    device: str = "cpu", dtype: str = "fp32", n: int = 1024, seconds: float = 0.5
) -> float:
    """Best observed FLOP/s of ``n×n @ n×n`` matmuls over about ``seconds`` (2·n³ FLOPs each)."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    best = 0.0
    for _ in range(2):  # warm-up
        a @ b
    deadline = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:  # at least three timed runs, even for a slow dtype
        runs += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def matmul_peak(device: str = "cpu", dtype: str = "fp32") -> float:
    """The cached peak FLOP/s of this machine, measured on first use (0.0, not cached, if the
    measurement failed)."""
    key = machine_key(device, dtype)
    cache = read_cache(CACHE)
    if float(cache.get(key, 0.0)) > 0:
        return float(cache[key])
    peak = measure_matmul_peak(device, dtype)
    if peak > 0:
        cache[key] = peak
        write_cache(CACHE, cache)
    log.info("measured matmul peak: %.1f GFLOP/s (%s)", peak / 1e9, key)
    return peak


def raise_peak(device: str, dtype: str, achieved: float, peak: float, ranks: int = 1) -> float:
    """The peak to divide by when ``ranks`` ranks together achieved ``achieved`` model FLOP/s against
    their summed ``peak``: ``peak``, or, when the run beat it (the cached measurement was taken on a busy
    machine), ``achieved``, whose share per rank is also cached as this machine's new peak. MFU computed
    against the result is at most 1."""
    if achieved <= peak:
        return peak
    key = machine_key(device, dtype)
    cache = read_cache(CACHE)
    if achieved / ranks > float(cache.get(key, 0.0)):
        cache[key] = achieved / ranks
        write_cache(CACHE, cache)
        log.info(
            "a run reached %.1f GFLOP/s a rank, above the cached peak: now the peak", achieved / ranks / 1e9
        )
    return achieved
