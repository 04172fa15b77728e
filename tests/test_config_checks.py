"""Issue 20's config checks, end to end through the CLI: a run that cannot fit in memory is refused
before any work, naming the key, and leaves no stage directory (nor its ``.partial``) behind."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.model.memory import LIMIT_ENV


@pytest.mark.parametrize(
    "args, key",
    [
        (["--model.block_size", "100000000"], "model.block_size"),
        (["--model.n_layer", "100000"], "model.n_layer"),
        (["--model.vocab_size", "100000000"], "model.vocab_size"),
        (["--depth", "300"], "depth"),
        (["--batch_size", "1000000"], "batch_size"),
        (["--procs", "64", "--model.n_embd", "4096", "--model.n_head", "32"], "model.n_embd"),
    ],
)
def test_pretrain_that_cannot_fit_fails_before_any_work(tmp_path, capsys, monkeypatch, args, key):
    monkeypatch.setenv(LIMIT_ENV, "4G")
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert f"error: {key}: the run needs about" in err and f"GiB is free ({LIMIT_ENV})" in err
    assert not out.exists() and not out.with_name("pretrain.partial").exists()
