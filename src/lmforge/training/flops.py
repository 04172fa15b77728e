"""Model FLOPs utilisation: the machine's measured matmul peak, cached, and MFU from tokens/s.

MFU (Chowdhery et al. 2022, PaLM, appendix B) = achieved model FLOPs per second / peak FLOPs per
second. The peak is not a datasheet number: it is measured once on this machine with large square
matmuls in the training dtype and the current thread count, then cached in
``~/.cache/lmforge/matmul_peak.json`` keyed by CPU/GPU model, threads, dtype and torch version.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge")) / "matmul_peak.json"


def _machine_key(device: str, dtype: str) -> str:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return f"{name}|{device}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def measure_matmul_peak(
    device: str = "cpu", dtype: str = "fp32", n: int = 1024, seconds: float = 0.5
) -> float:
    """Best observed FLOP/s of ``n×n @ n×n`` matmuls over about ``seconds`` (2·n³ FLOPs each)."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    best = 0.0
    deadline = time.perf_counter() + seconds
    for _ in range(3):  # warm-up
        a @ b
    while time.perf_counter() < deadline:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def matmul_peak(device: str = "cpu", dtype: str = "fp32") -> float:
    """The cached peak FLOP/s of this machine, measured on first use."""
    key = _machine_key(device, dtype)
    try:
        cache = json.loads(CACHE.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return float(cache[key])
    peak = measure_matmul_peak(device, dtype)
    cache[key] = peak
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE.with_name(f".{CACHE.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, CACHE)
    except OSError as exc:  # a read-only home is fine: measure again next time
        log.debug("could not cache the matmul peak: %s", exc)
    log.info("measured matmul peak: %.1f GFLOP/s (%s)", peak / 1e9, key)
    return peak
