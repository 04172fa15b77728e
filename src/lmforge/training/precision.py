"""``dtype: auto`` on a CPU: the faster of fp32 and bf16 autocast for *this* model on *this* machine,
chosen by measuring, never by a constant.

bf16 autocast is 2-4x faster than fp32 on a CPU with AMX or ``avx512_bf16`` and ~30x slower on one with
neither (the matmul falls back to a scalar path), and the model's shape decides how much of a step the
matmuls are. So ``choose_cpu_dtype`` times a few forward + backward passes of the actual model at the
actual batch shape in each precision (best of ``repeats`` after a warm-up, gradients and the torch RNG
restored, weights untouched), picks the faster, and caches the timings per machine (CPU model, threads,
torch version) and shape in ``~/.cache/lmforge/dtype_probe.json``, as the matmul peak is cached. bf16 must
be at least ``margin`` faster to be chosen (fp32 is exact and the default when they tie). On GPUs
``runtime.create_runtime``'s rule stands (bf16 where supported). The choice and the timings are recorded
in the stage's metrics (``dtype_bf16``, ``probe_fp32_ms``, ``probe_bf16_ms``).

Muon's Newton–Schulz iterations are a second precision choice: ``torch.optim.Muon`` always runs them in
bf16, which on a CPU without fast bf16 makes the optimiser alone cost several times the forward and
backward pass. ``choose_ns_dtype`` times the iterations on the model's own Muon matrix shapes in bf16
and in fp32 (cached the same way) and ``training/muon.py`` runs them in the faster (``ns_bf16``,
``probe_ns_fp32_ms``, ``probe_ns_bf16_ms`` in the metrics).

Whether Muon pays at all is the third choice (``optimizer: auto``): ``choose_optimizer`` keeps it while
its Newton–Schulz work per rank costs at most ``MUON_MAX_COST`` of a forward + backward pass of a rank's
batch (``fwd_bwd_ms``, timed and cached the same way), else AdamW alone. Every timing here goes through
``cached_timings``, which the ``procs: auto`` probe (``training/layout.py``) shares.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.runtime import CACHE_DIR, machine_key, read_timings, store_timings
from lmforge.training import distributed as ddp

log = logging.getLogger(__name__)

CACHE = CACHE_DIR / "dtype_probe.json"


def step_ms(model: nn.Module, batch: int, block: int, vocab: int, dtype: str, repeats: int = 3) -> float:
    """Best wall time in ms of a forward + backward of ``model`` on random ids ``[batch, block]`` under
    ``dtype`` (``fp32``: no autocast, ``bf16``: CPU autocast), after one warm-up pass. Gradients and the
    torch RNG are put back as they were; the weights are never changed."""
    rng = torch.get_rng_state()
    grads = {p: p.grad for p in model.parameters()}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vocab, (batch, block), generator=gen)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    best = float("inf")
    try:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with ctx:
                logits = model(idx)
            logits.float().logsumexp(-1).mean().backward()
            if i:  # the first pass warms kernels and allocators up
                best = min(best, (time.perf_counter() - t0) * 1000)
            for p in model.parameters():
                p.grad = None
    finally:
        for p, g in grads.items():
            p.grad = g
        torch.set_rng_state(rng)
    return best


def choose_cpu_dtype(
    model: nn.Module,
    batch: int,
    block: int,
    vocab: int,
    *,
    margin: float = 1.1,
    timer: Callable[[str], float] | None = None,
    cache: Path | None = None,
) -> tuple[str, dict[str, float]]:
    """``(dtype, timings)``: ``"bf16"`` when bf16 autocast runs a training step of ``model`` at least
    ``margin`` times faster than fp32 here, else ``"fp32"``; ``timings`` holds ``probe_fp32_ms`` and
    ``probe_bf16_ms``. ``timer(dtype)`` replaces the measurement (tests); results are cached per machine
    and shape in ``cache`` (default ``CACHE``)."""
    timings = cached_timings(
        "probe",
        _shape(model, batch, block, vocab),
        lambda dt: step_ms(model, batch, block, vocab, dt),
        timer,
        cache,
    )
    chosen = "bf16" if timings["probe_bf16_ms"] * margin <= timings["probe_fp32_ms"] else "fp32"
    log.info(
        "dtype auto: a training step of this model takes %.0f ms in fp32 and %.0f ms in bf16 autocast here: %s",
        timings["probe_fp32_ms"],
        timings["probe_bf16_ms"],
        chosen,
    )
    return chosen, timings


def cached_timings(
    prefix: str,
    shape: str,
    measure: Callable[[str], float],
    timer: Callable[[str], float] | None,
    cache: Path | None,
    options: tuple[str, ...] = ("fp32", "bf16"),
) -> dict[str, float]:
    """``{prefix}_{option}_ms`` for each of ``options`` for ``shape`` on this machine: read from
    ``cache`` (default ``CACHE``) or measured with ``measure(option)`` and stored (never a zero or an
    infinity); ``timer`` replaces the measurement and the cache (tests). Under a process group every rank
    must call it: the ranks' timings are averaged (measured side by side, as the ranks will train), so
    all of them see, choose and store the same figures."""
    cache = CACHE if cache is None else cache
    names = [f"{prefix}_{option}_ms" for option in options]
    key = f"{machine_key('cpu', prefix)}|{shape}"
    timings = read_timings(cache, key, names) if timer is None else None
    measured = timings is None
    if measured:
        run = timer or measure
        timings = {name: float(run(option)) for name, option in zip(names, options)}
    world = ddp.world()[1]
    timings = {name: ddp.all_reduce_sum(timings[name]) / world for name in names}
    if measured and timer is None:
        store_timings(cache, key, timings)
    return timings


def newton_schulz_ms(shapes: list[tuple[int, int]], dtype: str, steps: int = 5, repeats: int = 3) -> float:
    """Best wall time in ms of one optimiser step's Newton–Schulz work (``training.muon.newton_schulz``
    on one random matrix of each of ``shapes``) in ``dtype``, after a warm-up; the torch RNG is restored."""
    from lmforge.training.muon import newton_schulz

    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(shape, generator=gen) for shape in shapes]
    best = float("inf")
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        for m in mats:
            newton_schulz(m, steps=steps, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
        if i:
            best = min(best, (time.perf_counter() - t0) * 1000)
    return best


def choose_ns_dtype(
    shapes: list[tuple[int, int]],
    steps: int = 5,
    *,
    margin: float = 1.1,
    timer: Callable[[str], float] | None = None,
    cache: Path | None = None,
) -> tuple[str, dict[str, float]]:
    """``(dtype, timings)`` for Muon's Newton–Schulz iterations on matrices of ``shapes``: ``"bf16"``
    (torch's choice) when it is at least ``margin`` times faster than fp32 here, else ``"fp32"``;
    ``timings`` holds ``probe_ns_fp32_ms`` and ``probe_ns_bf16_ms`` (cached per machine and shapes)."""
    shape = f"ns|steps={steps}|" + ",".join(f"{a}x{b}" for a, b in sorted(shapes))
    timings = cached_timings("probe_ns", shape, lambda dt: newton_schulz_ms(shapes, dt, steps), timer, cache)
    chosen = "bf16" if timings["probe_ns_bf16_ms"] * margin <= timings["probe_ns_fp32_ms"] else "fp32"
    log.info(
        "Muon's Newton–Schulz takes %.1f ms per step in fp32 and %.1f ms in bf16 here: %s",
        timings["probe_ns_fp32_ms"],
        timings["probe_ns_bf16_ms"],
        chosen,
    )
    return chosen, timings


def auto_dtype(
    rt: Any, model: nn.Module, block: int, vocab: int, batch: int = 4
) -> tuple[Any, dict[str, float]]:
    """``rt`` with ``dtype: auto`` resolved for ``model`` on a CPU (``choose_cpu_dtype`` at a fixed probe
    batch, so runs of one model with other batch sizes or rank counts choose alike; the ranks choose
    from their mean timings), and the metrics to record (``probe_*_ms``, ``dtype_bf16``)."""
    import dataclasses

    chosen, probe = choose_cpu_dtype(model, batch, block, vocab)  # the ranks' mean timings: one choice
    return dataclasses.replace(rt, dtype=chosen), {**probe, "dtype_bf16": float(chosen == "bf16")}


def training_dtype(dtype: str, model: nn.Module, device: str) -> str:
    """The autocast dtype a fine-tuning loop trains ``model`` with on ``device`` when configured ``dtype``:
    ``dtype`` itself unless ``auto``; ``auto`` on a CPU is ``choose_cpu_dtype``'s measured choice for a
    decoder language model (at the probe batch pretraining uses, so the cached timing is shared) and fp32
    for any other module (a classifier's trunk and head are not timed); elsewhere ``create_runtime``'s rule
    (bf16 on a CUDA device that supports it, else fp32)."""
    if dtype != "auto":
        return dtype
    if device != "cpu":
        return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    mcfg = getattr(model, "config", None)
    if getattr(mcfg, "arch", None) != "decoder":
        return "fp32"
    return choose_cpu_dtype(model, 4, mcfg.block_size, mcfg.vocab_size)[0]


MUON_MAX_COST = 1.0
"""``optimizer: auto`` keeps Muon while its Newton–Schulz work per rank costs at most this multiple of a
forward + backward pass. On the shakespeare recipe AdamW with twice Muon's steps was still behind it
(1,333 steps: 2.102 bits/byte, Muon's 666: 2.086; docs/performance.md, "AdamW where Muon does not
pay"), so a Muon step costing up to 2x an AdamW step still wins in wall time; the pass is less than an
AdamW step, so measuring against it leans towards AdamW."""


def choose_optimizer(
    fwd_bwd_ms: float, ns_ms: float, ranks: int = 1, max_cost: float = MUON_MAX_COST
) -> tuple[str, dict[str, float]]:
    """``(optimizer, record)`` for ``optimizer: auto``: ``"muon"`` when one step's Newton–Schulz work
    (``ns_ms`` for every Muon matrix, shared out over ``ranks``) costs at most ``max_cost`` times a
    forward + backward pass of a rank's batch (``fwd_bwd_ms``), else ``"adamw"``; ``record`` holds the
    timings, the cost ratio ``muon_cost`` and ``optimizer_muon`` for the stage's metrics."""
    cost = ns_ms / max(ranks, 1) / fwd_bwd_ms
    chosen = "muon" if cost <= max_cost else "adamw"
    log.info(
        "optimizer auto: Muon's Newton-Schulz costs %.1f ms a rank per step, %.2fx the %.0f ms forward + "
        "backward (limit %.2f): %s",
        ns_ms / max(ranks, 1),
        cost,
        fwd_bwd_ms,
        max_cost,
        chosen,
    )
    return chosen, {
        "probe_fwd_bwd_ms": fwd_bwd_ms,
        "probe_muon_ns_ms": ns_ms,
        "muon_cost": cost,
        "optimizer_muon": float(chosen == "muon"),
    }


def fwd_bwd_ms(model: nn.Module, batch: int, block: int, vocab: int, dtype: str) -> float:
    """``step_ms`` of ``model`` at ``[batch, block]`` in ``dtype``, cached per machine and shape."""
    measure = lambda dt: step_ms(model, batch, block, vocab, dt)  # noqa: E731
    timed = cached_timings("probe_step", _shape(model, batch, block, vocab), measure, None, None, (dtype,))
    return timed[f"probe_step_{dtype}_ms"]


def _shape(model: nn.Module, batch: int, block: int, vocab: int) -> str:
    """The cache key of a timing of ``model`` at ``[batch, block]`` with ``vocab`` tokens."""
    return f"{type(model).__name__}|params={sum(p.numel() for p in model.parameters())}|{batch}x{block}|v={vocab}"
