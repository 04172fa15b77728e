"""The runtime: device, dtype, seed, threads and rank, decided once and passed around (never global).

Stages build one :class:`Runtime` with :func:`create_runtime` from their config and hand it to the
library code that needs it. torch is imported inside the function so importing this module is free.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed.

    Attributes:
        device: torch device string ("cpu", "cuda", "cuda:0", "mps").
        dtype: compute dtype name for autocast ("fp32" means no autocast).
        seed: base seed; every random stream of a stage derives from it.
        rank, world_size, local_rank: process position in a distributed job (0, 1, 0 alone).
    """

    device: str
    dtype: str
    seed: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes shared files (rank 0)."""
        return self.rank == 0

    def autocast(self) -> Any:
        """A context manager for mixed precision on this device, or a null context for fp32."""
        import contextlib

        import torch

        if self.dtype == "fp32":
            return contextlib.nullcontext()
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dt)


def create_runtime(device: str = "auto", dtype: str = "auto", seed: int = 0, threads: int = 0) -> Runtime:
    """Pick the device and dtype, seed every generator, and set the CPU thread count.

    Args:
        device: "auto" picks cuda, then mps, then cpu.
        dtype: "auto" is bf16 on CUDA with bf16 support, fp32 elsewhere (on CPUs without AMX bf16 is
            slower than fp32, measured: see docs).
        seed: seeds python, numpy and torch.
        threads: torch intra-op threads; 0 keeps torch's default (one per core).
    """
    import numpy as np
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigError("device", f"must be one of {', '.join(DEVICES)} or cuda:N, got {device!r}")
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{device} was asked for but torch sees no CUDA device")
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    rt = Runtime(device=device, dtype=dtype, seed=seed, rank=rank, world_size=world, local_rank=local)
    log.debug("runtime: %s", rt)
    return rt


# Per-machine measurement caches (~/.cache/lmforge/*.json): the matmul peak (training/flops.py), the
# dtype probe (training/precision.py) and the decode probes (inference/probe.py).
CACHE_DIR = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))


DECODE_SPIN = 100_000  # GOMP_SPINCOUNT of a decoding process (``spin_for_decoding``)


def spin_for_decoding() -> bool:
    """Let torch's OpenMP threads spin between parallel regions (``GOMP_SPINCOUNT=DECODE_SPIN``, about a
    millisecond or two of ``pause`` loops, then sleep) in a process whose work is decoding, unless the
    environment sets the count; returns whether the count is set for torch (False once torch is loaded:
    libgomp reads it when it loads).

    lmforge waits passively by default (``OMP_WAIT_POLICY=PASSIVE``, ``lmforge/__init__``): spinning
    threads on a shared core made a training step 7x slower. A decode step is the other case: a few
    hundred small ops around one matmul per projection, each matmul a parallel region; a passive worker
    sleeps after every region and is woken for the next, and on a VM a wake-up costs tens of
    microseconds, which made two threads slower than one (docs/performance.md, "spinning threads").
    Spinning keeps the worker awake across a step. The engine guards against the cost on a shared core:
    its thread choice is measured (``probe.choose_threads``) and kept under watch (``ThreadGovernor``),
    and one thread has no parallel regions to spin after. ``lmforge generate`` and ``lmforge chat`` call
    this before torch loads; training commands do not.
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("GOMP_SPINCOUNT", str(DECODE_SPIN))
    return True


def machine_key(device: str, dtype: str) -> str:
    """The key of a per-machine measurement: CPU (or GPU) model, device, ``dtype`` (or any probe name),
    torch's thread count and version."""
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


BUSY = 1.0  # load average per core above which other work was sharing the cores while a probe ran


def load_per_core() -> float:
    """The 1-minute load average divided by the cores (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def stale(entry: Any, now: float | None = None) -> bool:
    """Whether a cached probe ``entry`` (a dict of timings) should be measured again: it was measured
    while the machine was busy (its ``load_per_core`` above ``BUSY``) and the machine is quiet now
    (below half that; ``now`` defaults to ``load_per_core()``). A probe timed while other jobs held
    the cores can prefer the choice that suffers less from them (one thread over two), which is not
    the faster one on the machine a user has; a quiet measurement replaces it, a busy one never
    replaces a quiet one."""
    if not isinstance(entry, dict) or entry.get("load_per_core", 0.0) <= BUSY:
        return False
    return (load_per_core() if now is None else now) < BUSY / 2


def read_timings(path: Path, key: str, names: Sequence[str]) -> dict[str, float] | None:
    """The timings ``names`` a probe stored under ``key`` in the cache at ``path``, or None when they
    are missing, not all positive, or ``stale`` (then the probe measures them again)."""
    entry = read_cache(path).get(key)
    if stale(entry) or not (
        isinstance(entry, dict) and all(isinstance(entry.get(k), int | float) and entry[k] > 0 for k in names)
    ):
        return None
    return {k: float(entry[k]) for k in names}


def store_timings(path: Path, key: str, timings: dict[str, float]) -> None:
    """Store a probe's ``timings`` under ``key`` with the load they were measured at (``stale`` reads it);
    a zero or an infinity is never stored. The file is read again first: another process may have
    stored an entry meanwhile."""
    if not all(0 < v < float("inf") for v in timings.values()):
        return
    stored = read_cache(path)
    stored[key] = {**timings, "load_per_core": load_per_core()}
    write_cache(path, stored)


def read_cache(path: Path) -> dict:
    """A per-machine measurement cache (JSON object); empty when missing or unreadable."""
    try:
        cache = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_cache(path: Path, cache: dict) -> None:
    """Replace the cache at ``path`` atomically; a read-only home is fine (measured again next time)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not write the cache %s: %s", path, exc)
