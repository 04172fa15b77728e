"""model/checkpoint.py's own pieces beyond save/load (tests/training/test_checkpoint*.py cover those):
``write_final`` → ``resolve_checkpoint``, and ``read_meta``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.errors import InputError
from lmforge.model.checkpoint import (
    FINAL_FILE,
    META_FILE,
    build_model,
    checkpoint_dir,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
    write_final,
)
from lmforge.model.config import ModelConfig

CFG = ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)


def test_write_final_names_what_resolve_checkpoint_returns(tmp_path: Path) -> None:
    root = tmp_path / "stage" / "ckpt"
    for step in (2, 4):
        save_checkpoint(checkpoint_dir(root, step), build_model(CFG), CFG)
    write_final(root, last="step_4", best="step_2", stop_reason="max_steps")
    assert json.loads((root / FINAL_FILE).read_text()) == {
        "last": "step_4",
        "best": "step_2",
        "stop_reason": "max_steps",
    }
    assert resolve_checkpoint(tmp_path / "stage") == root / "step_2"
    assert resolve_checkpoint(tmp_path / "stage", "last") == root / "step_4"


def test_read_meta_is_empty_without_the_file_and_refuses_a_non_object(tmp_path: Path) -> None:
    assert read_meta(tmp_path) == {}
    (tmp_path / META_FILE).write_text(json.dumps({"method": "reward", "pooling": "last"}))
    assert read_meta(tmp_path)["pooling"] == "last"
    (tmp_path / META_FILE).write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_meta(tmp_path)
