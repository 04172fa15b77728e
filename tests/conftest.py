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


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page() -> Iterator[object]:
    """A Playwright page in headless Debian Chromium (``/usr/bin/chromium``); no browser download.

    Skips with a reason where Chromium or Playwright is missing (a user's machine), but fails under
    ``CI=true``, where ``.ci/run`` installs Chromium: a browser test must never silently skip in CI.
    """
    import os
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is not installed (make test installs the dev extra)")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def bwrap_sandbox() -> None:
    """Skips where bubblewrap cannot run the code sandbox (a user's machine), with the probe's reason, but
    fails under ``CI=true``, where ``.ci/run`` installs bubblewrap: the escape tests must never silently
    skip in CI."""
    import os

    from lmforge.eval.sandbox import sandbox_problem

    problem = sandbox_problem()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"no usable bubblewrap under CI=true: {problem} (.ci/run installs Debian's bubblewrap)")
    if problem:
        pytest.skip(f"no usable bubblewrap: {problem} (apt-get install -y bubblewrap)")
