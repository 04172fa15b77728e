"""The measured decode settings (``inference/probe.py``): which thread count the engine decodes with,
from fake timings (no test here depends on this machine's speed), how the choice is cached and recorded,
and the memory-bandwidth probe's cache."""

from __future__ import annotations

import pytest
import torch

from lmforge.inference import engine as engine_module
from lmforge.inference import probe
from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.decode_weights import DecodeWeights
from lmforge.model.decoder import Decoder


def tiny(block_size: int = 32) -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, block_size=block_size, n_layer=2, n_head=2, n_embd=16)
    return Decoder(cfg).eval()


@pytest.mark.parametrize(
    ("t1", "t2", "chosen"),
    [(10.0, 5.0, 2), (10.0, 9.6, 1), (10.0, 10.0, 1), (5.0, 10.0, 1)],
    ids=["two threads twice as fast", "within the margin", "tie", "one thread faster"],
)
def test_choose_threads_takes_the_faster_count(t1: float, t2: float, chosen: int) -> None:
    """All threads only when they are at least 5% faster than one (one thread frees the other cores)."""
    torch.set_num_threads(2)  # the fixture puts one thread back afterwards
    model = tiny()
    calls: list[int] = []

    def timer(threads: int) -> float:
        calls.append(threads)
        return {1: t1, 2: t2}[threads]

    threads, timings = probe.choose_threads(model, DecodeWeights(model), 1, timer=timer)
    assert threads == chosen
    assert timings == {"step_ms_t1": t1, "step_ms_t2": t2}
    assert calls == [1, 2] * 3  # interleaved rounds, so a change of load hits both


def test_one_thread_budget_is_not_measured() -> None:
    model = tiny()
    assert probe.choose_threads(model, DecodeWeights(model), 8, timer=lambda t: 1 / 0) == (1, {})


def test_choice_is_cached_per_shape_and_batch_bucket(tmp_path, monkeypatch) -> None:
    """Measured once per machine, model shape and batch bucket; a zero or infinite timing is not kept."""
    torch.set_num_threads(2)
    model = tiny()
    weights = DecodeWeights(model)
    measured: list[tuple[int, int]] = []

    def fake_step_ms(model, weights, batch, threads, **_) -> float:
        measured.append((batch, threads))
        return 4.0 if threads == 2 else 8.0

    monkeypatch.setattr(probe, "decode_step_ms", fake_step_ms)
    path = tmp_path / "decode_probe.json"
    assert probe.choose_threads(model, weights, 3, cache=path)[0] == 2
    assert probe.choose_threads(model, weights, 4, cache=path)[0] == 2  # same bucket (4): from the cache
    assert measured == [(4, 1), (4, 2)] * 3
    probe.choose_threads(model, weights, 5, cache=path)  # bucket 8: measured
    assert measured[6:] == [(8, 1), (8, 2)] * 3
    monkeypatch.setattr(probe, "decode_step_ms", lambda *a, **k: float("inf"))
    other = tmp_path / "other.json"
    assert probe.choose_threads(model, weights, 1, cache=other)[0] == 1
    assert not other.exists()


def test_batch_bucket() -> None:
    assert [probe.batch_bucket(b) for b in (1, 2, 3, 4, 5, 8, 9, 100)] == [1, 2, 4, 4, 8, 8, 16, 64]


def test_decode_step_ms_measures_and_leaves_state_alone() -> None:
    """A real (tiny) measurement: a positive time, the thread count and the RNG as they were; a context
    too short for a decode step times nothing (inf, so it is never chosen or cached)."""
    model = tiny()
    rng = torch.get_rng_state()
    ms = probe.decode_step_ms(model, DecodeWeights(model).refresh(), 2, threads=2, steps=2, repeats=1)
    assert 0 < ms < float("inf")
    assert torch.get_num_threads() == 1
    assert torch.equal(torch.get_rng_state(), rng)
    short = tiny(block_size=1)
    assert probe.decode_step_ms(short, DecodeWeights(short).refresh(), 1, threads=1) == float("inf")


def test_engine_decodes_on_the_chosen_threads_and_records_them(monkeypatch) -> None:
    """``threads="auto"`` asks the probe once per batch bucket, decodes on its answer, records it in
    ``stats.threads`` and puts torch's thread count back; an integer is used as given."""
    torch.set_num_threads(2)
    model = tiny()
    asked: list[int] = []
    seen: list[int] = []

    def fake_choose(model, weights, batch):
        asked.append(batch)
        return 1, {}

    monkeypatch.setattr(engine_module, "choose_threads", fake_choose)
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=3, temperature=0)
    for _event in engine.stream([[1, 2, 3]], params):
        seen.append(torch.get_num_threads())
    assert seen == [1, 1, 1] and engine.stats.threads == 1
    assert torch.get_num_threads() == 2
    engine.generate([[4, 5]], params)
    assert asked == [1]  # remembered for the bucket
    engine.generate([[4, 5], [6, 7, 8]], params)
    assert asked == [1, 2]
    fixed = Engine(model, threads=2)
    fixed.generate([[1, 2]], params)
    assert fixed.stats.threads == 2
    assert Engine(model, threads=0).generate([[1]], params) and torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [-1, 1.5, "all", True])
def test_engine_rejects_bad_threads(bad) -> None:
    with pytest.raises(ValueError, match="threads"):
        Engine(tiny(), threads=bad)


def test_memory_bandwidth_is_cached_per_machine(tmp_path, monkeypatch) -> None:
    assert probe.copy_gbps(mib=4, repeats=1) > 0
    path = tmp_path / "decode_probe.json"
    assert probe.memory_bandwidth(measure=lambda: 12.5, cache=path) == 12.5
    assert not path.exists()  # a fake measurement is never cached
    runs: list[int] = []
    monkeypatch.setattr(probe, "copy_gbps", lambda: runs.append(1) or 20.0)
    assert probe.memory_bandwidth(cache=path) == 20.0
    assert probe.memory_bandwidth(cache=path) == 20.0
    assert runs == [1]
    monkeypatch.setattr(probe, "copy_gbps", lambda: runs.append(2) or 15.0)
    assert probe.memory_bandwidth(cache=path, remeasure=True) == 20.0  # a lower figure does not replace it
    monkeypatch.setattr(probe, "copy_gbps", lambda: runs.append(3) or 25.0)
    assert probe.memory_bandwidth(cache=path, remeasure=True) == 25.0
    assert probe.memory_bandwidth(cache=path) == 25.0
    assert runs == [1, 2, 3]
    assert torch.get_num_threads() == 1


def test_each_count_keeps_its_best_round() -> None:
    """A slow round (another job took the core) does not decide: the best round of each count does."""
    torch.set_num_threads(2)
    model = tiny()
    rounds = iter([9.0, 30.0, 10.0, 6.0, 8.0, 40.0])  # t1, t2, t1, t2, ...
    threads, timings = probe.choose_threads(model, DecodeWeights(model), 1, timer=lambda t: next(rounds))
    assert timings == {"step_ms_t1": 8.0, "step_ms_t2": 6.0} and threads == 2


def test_a_probe_timed_on_a_busy_machine_is_timed_again_once_it_is_quiet(tmp_path, monkeypatch) -> None:
    """A choice cached while other jobs held the cores (load per core > 1) is measured again when the
    machine is quiet (< 0.5) and the quiet figure stays; a busy machine never replaces a quiet figure."""
    from lmforge import runtime

    torch.set_num_threads(2)
    model, calls = tiny(), []
    weights = DecodeWeights(model)
    load = {"now": 3.0}
    monkeypatch.setattr(runtime, "load_per_core", lambda: load["now"])  # read by stale and store_timings

    def timings(t1: float, t2: float):
        return lambda model, weights, batch, threads, **_: (
            calls.append(threads) or (t1 if threads == 1 else t2)
        )

    path = tmp_path / "decode_probe.json"
    monkeypatch.setattr(probe, "decode_step_ms", timings(4.0, 9.0))  # busy: the second thread waits its turn
    assert probe.choose_threads(model, weights, 8, cache=path)[0] == 1
    busy = len(calls)
    load["now"] = 1.5  # still busy: the cached figure stands
    assert probe.choose_threads(model, weights, 8, cache=path)[0] == 1 and len(calls) == busy
    monkeypatch.setattr(probe, "decode_step_ms", timings(8.0, 4.0))
    load["now"] = 0.2  # quiet: measured again
    assert probe.choose_threads(model, weights, 8, cache=path) == (2, {"step_ms_t1": 8.0, "step_ms_t2": 4.0})
    quiet = len(calls)
    assert quiet > busy
    load["now"] = 3.0  # busy again: the quiet figure is kept, nothing is measured
    assert probe.choose_threads(model, weights, 8, cache=path)[0] == 2 and len(calls) == quiet


def test_stale_needs_a_busy_measurement_and_a_quiet_machine() -> None:
    from lmforge.runtime import stale

    assert stale({"a_ms": 1.0, "load_per_core": 2.0}, now=0.1)
    assert not stale({"a_ms": 1.0, "load_per_core": 2.0}, now=0.8)  # not quiet enough to do better
    assert not stale({"a_ms": 1.0, "load_per_core": 0.9}, now=0.0)  # measured quiet
    assert not stale({"a_ms": 1.0}, now=0.0)  # cached before loads were recorded: kept
    assert not stale(None, now=0.0)


def drive(gov: probe.ThreadGovernor, step_ms: dict[int, float], steps: int, slow_from: int = -1) -> list[int]:
    """Run ``steps`` decode steps through ``gov`` with fake step times (ms per thread count; from step
    ``slow_from`` on, two threads take 10x as long: a job took the other core); returns the counts used."""
    used = []
    for i in range(steps):
        t = gov.before()
        used.append(t)
        ms = step_ms[t] * (10 if t > 1 and 0 <= slow_from <= i else 1)
        gov.after(ms / 1000)
    return used


def test_governor_moves_to_one_thread_when_two_become_slow() -> None:
    """Two threads are faster until another job arrives (10x slower from step 100): the governor is on
    one thread within a few steps (the alarm brings the trial forward) and stays there, but for its trials."""
    gov = probe.ThreadGovernor(2, 2, every=64, trial=2)
    used = drive(gov, {1: 5.0, 2: 3.0}, 200, slow_from=100)
    assert used[:64] == [2] * 64  # the first trial comes after 64 timed steps
    assert used[65:67] == [1, 1]  # ... at one thread, which loses: back to two
    assert 2 in used[67:100]
    assert used[110:].count(2) <= 2 * 2 and gov.current == 1 and gov.switches == 1  # trials only


def test_governor_moves_to_the_faster_count_and_costs_few_steps_when_right() -> None:
    """Started on the slower count, the governor moves at its first trial; started right, it spends only
    its trial steps (2 in every 64) on the other count."""
    wrong = probe.ThreadGovernor(1, 2, every=16, trial=2)
    used = drive(wrong, {1: 5.0, 2: 3.0}, 60)
    assert wrong.current == 2 and wrong.switches == 1 and used[20:].count(1) <= 2 * (40 // 16 + 1)
    right = probe.ThreadGovernor(2, 2, every=64, trial=2)
    used = drive(right, {1: 5.0, 2: 3.0}, 400)
    assert right.switches == 0 and used.count(1) <= 2 * (400 // 64)


def test_governor_is_inactive_with_one_thread_or_disabled() -> None:
    for gov in (probe.ThreadGovernor(1, 1), probe.ThreadGovernor(2, 2, enabled=False)):
        start = gov.current
        assert drive(gov, {1: 1.0, 2: 50.0}, 300) == [start] * 300 and gov.switches == 0


def test_engine_governs_unseeded_calls_and_keeps_a_seeded_count(monkeypatch) -> None:
    """The engine runs each plain decode step at the governor's count and remembers where a call ended;
    a seeded call keeps its starting count (its sample must not depend on timing)."""
    torch.set_num_threads(2)
    model = tiny()
    monkeypatch.setattr(engine_module, "choose_threads", lambda model, weights, batch: (2, {}))
    made: list[probe.ThreadGovernor] = []

    class Fake(probe.ThreadGovernor):  # two threads look 10x slower than one
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "every": 4})
            made.append(self)

        def after(self, seconds: float) -> None:
            super().after(seconds * (10 if torch.get_num_threads() > 1 else 1))

    monkeypatch.setattr(engine_module, "ThreadGovernor", Fake)
    engine = Engine(model)
    seen = []
    for _event in engine.stream([[1, 2, 3]], SamplingParams(max_new_tokens=20, temperature=0)):
        seen.append(torch.get_num_threads())
    assert made[-1].switches >= 1 and engine.stats.thread_switches >= 1
    assert made[-1].current == 1 and 1 in seen and torch.get_num_threads() == 2  # put back after the call
    assert engine._threads(1) == 1  # the next call starts where this one ended
    engine._chosen.clear()
    engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=20, temperature=1.0, seed=3))
    assert not made[-1].enabled and engine.stats.thread_switches == 0 and engine.stats.threads == 2
