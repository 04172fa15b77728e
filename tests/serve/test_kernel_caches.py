"""The server caps the shape-keyed kernel caches whose filling made its memory grow under load."""

from __future__ import annotations

import os

import pytest

from lmforge.serve.app import KERNEL_CACHE_VARS, bound_kernel_caches


def test_caps_are_set_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in KERNEL_CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")
    bound_kernel_caches(8)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "8"
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"  # the user's own choice is kept
