"""Shared test fixtures.

``one_torch_thread``: run a test with torch on one thread. The models in unit tests are tiny, so one
thread is as fast as several and immune to oversubscription when the machine is busy; the previous
thread count is restored afterwards. The model and training packages use it for every test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
