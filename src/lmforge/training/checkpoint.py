"""Training state of a checkpoint: ``train_state.pt``, resuming from the newest intact checkpoint,
pruning old ones, RNG state.

The checkpoint directory itself (weights, config, tokenizer copy, ``DONE`` marker with checksums,
``final.json``) is the model layer's (``model/checkpoint.py``); a training loop saves with
``model.checkpoint.save_checkpoint(..., train_state=...)``. Here is what only training needs:

- ``rng_state`` / ``set_rng_state``: the generators to put into ``train_state`` and restore.
- ``load_train_state``: ``train_state.pt`` read with ``weights_only=True``.
- ``load_resumable`` (a resumed pretraining run) takes the newest checkpoint that verifies and loads,
  moving each newer unusable one aside to ``step_N.rejected`` with a warning saying why (a
  ``train_state.pt`` that ``weights_only`` refuses is reported as refused).
- ``prune_checkpoints``: keep the newest ``keep_last`` (and the best).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import InputError, UnsafePickleError
from lmforge.model.checkpoint import (
    TRAIN_STATE_FILE,
    complete_checkpoints,
    load_weights,
    require_complete,
    verify_checkpoint,
)
from lmforge.model.config import ModelConfig

logger = logging.getLogger(__name__)

REJECTED_SUFFIX = ".rejected"


def load_train_state(dir: Path) -> dict:
    """Read ``train_state.pt`` of a complete checkpoint with ``weights_only=True``, tensors on CPU.

    Raises:
        UnsafePickleError: the file holds code or objects beyond plain data (refused, never run).
        InputError: missing directory, no ``DONE``, no ``train_state.pt``, or an unreadable one.
    """
    path = require_complete(dir) / TRAIN_STATE_FILE
    if not path.is_file():
        raise InputError(f"checkpoint {dir} has no {TRAIN_STATE_FILE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError.from_exception(path, e) from e
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(
            f"{path}: unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def load_resumable(
    ckpt_root: Path, cfg: ModelConfig, *, move_aside: bool = True
) -> tuple[Path, dict[str, torch.Tensor], dict] | None:
    """``(dir, weights, train_state)`` of the newest complete checkpoint under ``ckpt_root`` that
    verifies and loads, or None when there is none (a fresh start).

    Each newer checkpoint that fails (a damaged file, a refused or unreadable ``train_state.pt``) is
    reported with a warning naming the file and why and, with ``move_aside``, renamed to
    ``step_N.rejected`` (replacing an older one of that name): kept for inspection, but never resumed
    from or counted by ``prune_checkpoints``, so pruning after the next save cannot delete the intact
    checkpoint in its favour. Other ranks of a distributed job pass ``move_aside=False`` and report at
    debug level; they skip the same checkpoints.
    """
    say = logger.warning if move_aside else logger.debug
    rejected = 0
    for _, dir in reversed(complete_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(dir)
            state = load_train_state(dir)
            weights = load_weights(dir, cfg)
        except InputError as e:
            rejected += 1
            verb = "refused to resume from" if isinstance(e, UnsafePickleError) else "cannot resume from"
            if move_aside:
                aside = dir.with_name(dir.name + REJECTED_SUFFIX)
                if aside.exists():
                    shutil.rmtree(aside)
                os.replace(dir, aside)
                say("%s %s: %s; moved aside to %s, trying an older checkpoint", verb, dir.name, e, aside.name)
            else:
                say("%s %s: %s", verb, dir.name, e)
            continue
        if rejected:
            say("resuming from %s, the newest intact checkpoint", dir.name)
        return dir, weights, state
    if rejected:
        say("no intact checkpoint under %s: training starts again from step 0", ckpt_root)
    return None


def prune_checkpoints(
    ckpt_root: Path, keep_last: int, keep: set[Path] | frozenset[Path] = frozenset()
) -> list[Path]:
    """Delete complete checkpoints except the ``keep_last`` newest and any in ``keep``; return the deleted.

    Also deletes ``step_N.tmp`` / ``step_N.old`` leftovers of interrupted saves, so call it only while no
    save is in progress. Incomplete ``step_N`` directories (no ``DONE``) are left alone.

    Raises:
        ValueError: ``keep_last`` < 0.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    keep_resolved = {Path(p).resolve() for p in keep}
    complete = [path for _, path in complete_checkpoints(ckpt_root)]
    doomed = complete[: max(0, len(complete) - keep_last)]
    doomed = [p for p in doomed if p.resolve() not in keep_resolved]
    if Path(ckpt_root).is_dir():
        doomed += [
            p
            for p in Path(ckpt_root).iterdir()
            if p.is_dir() and re.fullmatch(r"step_\d+\.(tmp|old)", p.name)
        ]
    for path in doomed:
        shutil.rmtree(path)
        logger.info("pruned checkpoint %s", path)
    return doomed


def rng_state() -> dict[str, Any]:
    """The random-number-generator state to store in ``train_state``, as tensors.

    Holds the torch CPU generator (``"torch_cpu"``) and, when CUDA is available, every CUDA device's
    generator (``"torch_cuda"``). Python's ``random`` and NumPy are not captured: lmforge draws training
    randomness (init, dropout, sampling) from torch, and data order is part of the loader's own state.
    """
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by ``rng_state`` (CUDA state only when present and CUDA is available)."""
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
