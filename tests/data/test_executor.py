"""Tests for lmforge.data.executor: results in item order, lazy inputs, errors surface, config errors."""

from __future__ import annotations

import os

import pytest

from lmforge.data.executor import LocalExecutor, make_executor
from lmforge.errors import ConfigError


def square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def test_single_worker_runs_in_process_and_keeps_order():
    with LocalExecutor(1) as ex:
        out = ex.map(square_with_pid, iter(range(5)))
    assert [r for r, _ in out] == [0, 1, 4, 9, 16]
    assert {pid for _, pid in out} == {os.getpid()}


def test_processes_keep_order_with_a_lazy_input_and_reuse_the_pool():
    produced = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    with LocalExecutor(2) as ex:
        out = ex.map(square_with_pid, items())
        again = ex.map(square_with_pid, [7])
    assert [r for r, _ in out] == [i * i for i in range(20)] and produced == list(range(20))
    assert os.getpid() not in {pid for _, pid in out}
    assert again[0][1] in {pid for _, pid in out}  # the same worker processes served both calls


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_item_raises_its_error(workers):
    with LocalExecutor(workers) as ex, pytest.raises(ValueError, match="bad item 3"):
        ex.map(fail_on_three, range(6))


def test_make_executor_validates():
    assert make_executor("local", 3).workers == 3
    assert make_executor("local").workers >= 1
    with pytest.raises(ConfigError, match="executor"):
        make_executor("spark")
    with pytest.raises(ValueError):
        LocalExecutor(-1)
