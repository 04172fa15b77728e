"""Shared test set-up: every test runs torch on one thread.

The models here are tiny, so one thread is as fast as several and immune to oversubscription when the
machine is busy. The previous thread count is restored after each test so other test packages keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
