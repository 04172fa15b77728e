"""Every test in this package runs torch on one thread (see ``one_torch_thread`` in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None
