"""Every test in this package runs torch on one thread (see ``one_torch_thread`` in tests/conftest.py);
``tokenizer_dir`` is a small data + tokenizer run for the tests that pretrain."""

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from lmforge.cli import main

    run = tmp_path_factory.mktemp("tok")
    assert main(["data", f"--out={run / 'data'}", "--max_docs=60", "-q"]) == 0
    assert main(["tokenizer", f"--out={run / 'tokenizer'}", "--vocab_size=320", "-q"]) == 0
    return run / "tokenizer"
