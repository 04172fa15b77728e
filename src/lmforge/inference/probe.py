"""Measured decode settings of this machine: the thread count decoding runs with, and the memory
bandwidth that bounds it.

A decode step reads every weight once to make one token per row, so at small batch it is bound by
memory traffic and per-op overhead, and whether a second thread pays depends on the CPU, the model's
shape, the batch and how busy the other cores are: on one 2-core VM two threads made decoding slower
(small ops, OpenMP wake-ups), on the next they doubled the bandwidth the matmuls read weights at. So the
engine does not guess: ``choose_threads`` times a few decode steps of the actual model at the actual
batch (rounded up to a power of two) with one thread and with all of the process's threads (the count
torch has when the engine runs: one per core by default, fewer when a stage set it), the two counts
interleaved over several rounds and the best of each kept, and keeps the faster (the single thread unless the other is at least ``margin`` faster:
one thread leaves the other cores to other work). Timings are cached per machine (CPU model, thread
count, torch version) and shape in ``~/.cache/lmforge/decode_probe.json`` as the matmul peak and the
dtype probe are, never a zero or an infinity. The probe leaves the model, the torch RNG and the thread
count as it found them.

Two threads pay only if the second stays awake: a decode step is one parallel region per matmul with
small ops between, and a passively waiting OpenMP worker (lmforge's default) is put to sleep after each
region and woken for the next, which on a VM costs tens of microseconds a time: two threads decoded
slower than one. ``lmforge generate`` and ``chat`` therefore let the workers spin
(``runtime.spin_for_decoding``); the wait policy is part of the cache key. Spinning threads are costly on
a shared core, so a call does not trust one measurement: ``ThreadGovernor`` times the steps of the call
and moves it to the faster count while it runs.

``memory_bandwidth`` measures the rate this machine streams a buffer much larger than the last-level
cache (best of several copies, read + write bytes counted, cached the same way): the physical limit a
decode step's weight reads are compared against (``bench/generate_bench.py``'s bandwidth column).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.model.decode_weights import DecodeWeights
from lmforge.model.decoder import Decoder
from lmforge.runtime import CACHE_DIR, machine_key, read_cache, read_timings, store_timings, write_cache

log = logging.getLogger(__name__)

CACHE = CACHE_DIR / "decode_probe.json"
PROMPT = 16  # prompt tokens before the timed decode steps


def batch_bucket(batch: int) -> int:
    """``batch`` rounded up to a power of two (the batch the probe measures for it), at most 64."""
    return min(1 << max(batch - 1, 0).bit_length(), 64)


def decode_step_ms(
    model: Decoder, weights: DecodeWeights, batch: int, threads: int, steps: int = 4, repeats: int = 3
) -> float:
    """Best wall time in ms of one cached decode step of ``model`` (prepared ``weights``) for ``batch``
    rows at ``threads`` torch threads: ``repeats`` timed runs of ``steps`` steps after a 16-token
    prefill (shorter when ``block_size`` is), after one warm-up run. The thread count and the torch RNG are put back; the model's own
    state is never changed (its cache is a fresh one)."""
    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    vocab, block = model.config.vocab_size, model.config.block_size
    length = max(1, min(PROMPT, block - steps))  # a short context fits the prompt and the steps
    steps = min(steps, block - length)
    if steps < 1:  # a context of one token has no decode step
        return float("inf")
    prompt = torch.randint(0, vocab, (batch, length), generator=gen)
    tokens = torch.randint(0, vocab, (batch, 1), generator=gen)
    best = float("inf")
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            for i in range(repeats + 1):
                cache = model.new_kv_cache(batch, length + steps)
                model(prompt, cache, weights=weights, last_only=True)
                t0 = time.perf_counter()
                for _ in range(steps):
                    model(tokens, cache, weights=weights)
                if i:  # the first run warms kernels, allocators and packed weights up
                    best = min(best, (time.perf_counter() - t0) * 1000 / steps)
    finally:
        torch.set_num_threads(before)
    return best


def choose_threads(
    model: Decoder,
    weights: DecodeWeights,
    batch: int,
    *,
    margin: float = 1.05,
    rounds: int = 3,
    timer: Callable[[int], float] | None = None,
    cache: Path | None = None,
) -> tuple[int, dict[str, float]]:
    """``(threads, timings)``: the torch thread count to decode ``batch`` rows of ``model`` with here,
    1 or ``torch.get_num_threads()`` (N), whichever runs a decode step faster (N only when at least
    ``margin`` times faster); ``timings`` maps ``"step_ms_t{n}"`` to each count's best time over
    ``rounds`` interleaved measurements (``decode_step_ms``; empty when N is 1: nothing to choose).
    ``timer(threads)`` replaces the measurement and the cache (tests)."""
    n = torch.get_num_threads()
    if n <= 1:
        return 1, {}
    bucket = batch_bucket(batch)
    cfg = model.config
    shape = (
        f"decode|L={cfg.n_layer}|D={cfg.n_embd}|H={cfg.n_head}|K={cfg.kv_heads}|F={cfg.hidden_dim}"
        f"|V={cfg.vocab_size}|weights={weights.weights}|b={bucket}|omp={openmp_waiting()}"
    )
    key = f"{machine_key('cpu', 'decode_threads')}|{shape}"
    path = CACHE if cache is None else cache
    names = ("step_ms_t1", f"step_ms_t{n}")
    timings = read_timings(path, key, names) if timer is None else None
    if timings is None:
        measure = timer or (lambda t: decode_step_ms(model, weights.refresh(), bucket, t, repeats=1))
        timings = {name: float("inf") for name in names}
        for _ in range(rounds):  # interleaved, so a change of load between them hits both counts
            for name, t in zip(names, (1, n)):
                timings[name] = min(timings[name], float(measure(t)))
        if timer is None:
            store_timings(path, key, timings)
    threads = n if timings[names[1]] * margin < timings[names[0]] else 1
    log.info(
        "decode threads auto: a step of %d rows takes %.2f ms on 1 thread and %.2f ms on %d here: %d",
        bucket,
        timings[names[0]],
        timings[names[1]],
        n,
        threads,
    )
    return threads, timings


def openmp_waiting() -> str:
    """How OpenMP threads wait between parallel regions in this process (``GOMP_SPINCOUNT`` or
    ``OMP_WAIT_POLICY`` as the environment has them; ``runtime.spin_for_decoding``): part of the decode
    probe's cache key, since whether two threads pay depends on it."""
    spin = os.environ.get("GOMP_SPINCOUNT")
    return f"spin{spin}" if spin else os.environ.get("OMP_WAIT_POLICY", "default").lower()


def copy_gbps(mib: int = 256, repeats: int = 5) -> float:
    """Best rate in GB/s (bytes read + bytes written) of copying a ``mib`` MiB fp32 buffer into another,
    at torch's current thread count, after a warm-up copy."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def memory_bandwidth(
    threads: int | None = None,
    *,
    remeasure: bool = False,
    measure: Callable[[], float] | None = None,
    cache: Path | None = None,
) -> float:
    """This machine's memory bandwidth in GB/s at ``threads`` torch threads (default: the current count):
    ``copy_gbps``, measured once and cached per machine and thread count. ``remeasure`` measures again
    and keeps the higher of the two (a figure taken while other jobs ran is low: a benchmark run under
    a lock raises it). ``measure`` replaces the measurement and the cache (tests). The thread count is
    put back."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads or before)
        key = machine_key("cpu", "copy_gbps")
        path = CACHE if cache is None else cache
        stored = read_cache(path) if measure is None else {}
        value = stored.get(key)
        value = float(value) if isinstance(value, int | float) and value > 0 else 0.0
        if remeasure or value <= 0:
            fresh = float((measure or copy_gbps)())
            if measure is None and 0 < fresh < float("inf") and fresh > value:
                stored[key] = fresh
                write_cache(path, stored)
            value = max(value, fresh)
    finally:
        torch.set_num_threads(before)
    return value


class ThreadGovernor:
    """Keeps one decode call on the faster of 1 and ``n`` threads while it runs, by measurement.

    ``choose_threads`` decides once, from a few steps; the machine can change under a long call (another
    job takes a core), and with OpenMP threads that spin between parallel regions (``runtime.
    spin_for_decoding``) two threads on a shared core become many times slower, not a little. So the
    engine times its steps: every ``every`` steps at the current count, ``trial`` steps run at the other
    count, and the call moves to the other count when their mean is ``margin`` times faster than the
    mean of the last ``trial`` steps at the current one; a step at more than one thread that takes over
    ``alarm`` times the median of its recent steps brings the trial forward. Trials at the slower count
    cost a few percent of a call that was on the right count; a call on the wrong count is moved within
    ``every`` steps. The first step is not timed (it may pay one-time setup).

    Use: ``threads = gov.before()`` before a step (the count to set), ``gov.after(seconds)`` after it.
    ``switches`` counts the moves. Inactive (always ``start``) when ``n`` is 1 or ``enabled`` is False.
    """

    def __init__(
        self,
        start: int,
        n: int,
        *,
        enabled: bool = True,
        every: int = 64,
        trial: int = 2,
        margin: float = 1.05,
        alarm: float = 2.0,
    ):
        self.current, self.n = start, n
        self.enabled = enabled and n > 1
        self.every, self.trial, self.margin, self.alarm = every, trial, margin, alarm
        self.recent: deque[float] = deque(maxlen=every)  # the last step times at the current count
        self.tried: list[float] = []  # step times of the running trial at the other count
        self.since = 0  # steps at the current count since the last trial
        self.testing = False
        self.warm = False
        self.switches = 0

    def other(self) -> int:
        """The count a trial runs at."""
        return 1 if self.current > 1 else self.n

    def before(self) -> int:
        """The thread count the next step runs at."""
        if not self.enabled:
            return self.current
        if not self.testing and self.warm and self.since >= self.every:
            self.testing, self.tried = True, []
        return self.other() if self.testing else self.current

    def after(self, seconds: float) -> None:
        """Record the wall time of the step ``before`` announced."""
        if not self.enabled:
            return
        if not self.warm:
            self.warm = True
            return
        if self.testing:
            self.tried.append(seconds)
            if len(self.tried) >= self.trial:
                mine = list(self.recent)[-self.trial :]
                if mine and sum(self.tried) * self.margin < sum(mine) * len(self.tried) / len(mine):
                    self.current, self.recent = self.other(), deque(self.tried, maxlen=self.every)
                    self.switches += 1
                self.testing, self.since = False, 0
            return
        self.recent.append(seconds)
        self.since += 1
        if self.current > 1 and len(self.recent) >= 4:
            ordered = sorted(self.recent)
            if seconds > self.alarm * ordered[len(ordered) // 2]:
                self.since = self.every  # a step far slower than usual: try the other count now
