"""Checkpoint directories: the file format, atomic writes, verification, loading a model, which one to use.

A checkpoint is a directory (conventionally ``<ckpt_root>/step_N``, see ``checkpoint_dir``) holding:

- ``model.safetensors``: the model's state dict. With tied embeddings ``lm_head.weight`` is the same
  tensor as ``tok_emb.weight``, so it is stored once (as ``tok_emb.weight``) and re-tied on load.
- ``model_config.json``: ``ModelConfig.to_dict()`` (input fields and ``"format": 1``).
- ``tokenizer.json``: a copy of the tokenizer, when given, so the directory is self-contained.
- ``train_state.pt``: optional, for resuming (``training/checkpoint.py`` builds and reads it): plain
  data only (tensors, numbers, strings, lists, tuples, dicts), so ``torch.load(..., weights_only=True)``
  reads it back and loading never runs pickled code.
- ``heads.safetensors`` and ``finetune.json``: optional, what fine-tuning adds (task heads; the method,
  pooling and labels, read by ``read_meta``).
- ``DONE``: written last, the completion marker: JSON ``{"format": 2, "files": {name: {"bytes": n,
  "sha256": hex}}}`` recording every other file. Everything is written into ``<dir>.tmp`` and renamed
  into place, so a directory named ``step_N`` is complete; readers still insist on ``DONE``.

Integrity: ``verify_checkpoint`` compares sizes, then sha256, with the marker, so a truncated, emptied,
missing or bit-flipped file is named instead of crashing a load or loading different weights.
``load_model`` (every later stage) verifies and fails with an error naming the file and the stage to
re-run. Markers written before checksums (``complete``) still load, unverified. Files added to a
checkpoint directory after it was saved (a LoRA adapter) are not in the marker and not verified.

A training stage keeps its checkpoints in ``<stage>/ckpt/`` and, when it finishes, writes
``<stage>/ckpt/final.json`` (``write_final``: ``{"last": "step_N", "best": "step_M", ...}``) naming
which to use; ``resolve_checkpoint`` reads it.

This is the model layer's: serving, evaluation, inference and export read checkpoints through it
without importing ``training``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import ConfigError, InputError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.model.heads import EncoderForPretraining
from lmforge.runstore import (
    MANIFEST,
    TOKENIZER_FILE,
    read_json,
    read_manifest,
    sha256_file,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TRAIN_STATE_FILE = "train_state.pt"
HEADS_FILE = "heads.safetensors"  # a fine-tune's task heads
META_FILE = "finetune.json"  # what a fine-tune recorded: method, pooling, labels
POOLING_FILE = "pooling.json"  # the sentence pooling an imported model declares (interop/hf_bert.py)
DONE_FILE = "DONE"
FINAL_FILE = "final.json"
MARKER_FORMAT = 2  # DONE as JSON with per-file sizes and sha256; before it, DONE held "complete"
TIED_KEY, TIED_SOURCE = "lm_head.weight", "tok_emb.weight"
_STEP_DIR = re.compile(r"step_(\d+)")


def checkpoint_dir(ckpt_root: Path, step: int) -> Path:
    """The directory of the checkpoint taken after ``step``: ``<ckpt_root>/step_<step>``."""
    return Path(ckpt_root) / f"step_{step}"


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError (naming the key path) unless ``obj`` is loadable with ``weights_only=True``."""
    if obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _check_plain(item, f"{where}[{i}]")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: dict key {key!r} must be a str or int")
            _check_plain(value, f"{where}[{key!r}]")
    else:
        raise TypeError(
            f"{where} is a {type(obj).__name__}; train_state may hold only tensors, numbers, strings, "
            "None, lists, tuples and dicts"
        )


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (directories are skipped where the OS does not allow it)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    dir: Path,
    model: nn.Module,
    model_config: ModelConfig,
    *,
    tokenizer_path: Path | None = None,
    train_state: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra_files: dict[str, Any] | None = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a complete checkpoint to ``dir`` atomically (via ``<dir>.tmp``) and return ``dir``.

    An existing ``dir`` is replaced. ``model_config`` must be the model's own config. ``state_dict``,
    when given, is saved instead of ``model.state_dict()`` (e.g. the full state gathered from FSDP shards).
    ``extra_files`` maps file names to plain data written as JSON inside the checkpoint (e.g. an imported
    model's declared sentence pooling), ``extra_tensors`` file names to tensors written as safetensors
    (e.g. a fine-tune's task heads); both before the completion marker, so their checksums are recorded
    and verified like every other file's.

    Raises:
        ValueError: ``model_config`` differs from ``model.config``, or the config says tied but the
            model's ``lm_head`` and ``tok_emb`` weights are separate tensors.
        TypeError: ``train_state`` holds something other than plain data (the message names the key).
        InputError: ``tokenizer_path`` is not a file.
    """
    dir = Path(dir)
    if getattr(model, "config", model_config) != model_config:
        raise ValueError(f"model_config {model_config} differs from the model's config {model.config}")
    if train_state is not None:
        _check_plain(train_state, "train_state")
    if tokenizer_path is not None and not Path(tokenizer_path).is_file():
        raise InputError(f"tokenizer file not found: {tokenizer_path}")
    source = model.state_dict() if state_dict is None else state_dict
    if model_config.arch == "decoder" and model_config.tie_embeddings and state_dict is None:
        if model.get_parameter(TIED_KEY) is not model.get_parameter(TIED_SOURCE):
            raise ValueError("config has tie_embeddings=True but lm_head.weight is not tok_emb.weight")
    state = {}
    tied = tied_keys(model)
    for key, value in source.items():
        if key in tied:
            continue  # the same tensor as the embedding; re-tied by the model's constructor on load
        state[key] = value.detach().to("cpu").contiguous()

    tmp = dir.with_name(dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    (tmp / CONFIG_FILE).write_text(json.dumps(model_config.to_dict(), indent=2) + "\n")
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE_FILE)
    for name, data in (extra_files or {}).items():
        (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
    for name, tensors in (extra_tensors or {}).items():
        contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(tmp / name), metadata={"format": "pt"})
    files = {}
    for path in sorted(tmp.iterdir()):
        _fsync(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    marker = {"format": MARKER_FORMAT, "files": files}
    (tmp / DONE_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    _fsync(tmp / DONE_FILE)
    _fsync(tmp)

    if dir.exists():
        old = dir.with_name(dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dir, old)
        os.replace(tmp, dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dir)
    _fsync(dir.parent)
    logger.info("saved checkpoint %s", dir)
    return dir


def require_complete(dir: Path) -> Path:
    """Return ``dir`` if it is a checkpoint with ``DONE``; raise InputError otherwise."""
    dir = Path(dir)
    if not dir.is_dir():
        raise InputError(f"checkpoint directory not found: {dir}")
    if not (dir / DONE_FILE).is_file():
        raise InputError(
            f"checkpoint {dir} is incomplete (no {DONE_FILE} marker); it was interrupted mid-write"
        )
    return dir


def recorded_files(dir: Path) -> dict[str, dict[str, Any]] | None:
    """``{name: {"bytes", "sha256"}}`` that a checkpoint's ``DONE`` records, or None for a marker written
    before checksums were recorded (``complete`` or empty).

    Raises:
        InputError: no ``DONE``, or a marker that is neither form (the marker itself is damaged).
    """
    marker = require_complete(dir) / DONE_FILE
    try:
        text = marker.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as e:
        raise InputError(f"checkpoint {dir}: {DONE_FILE}: unreadable: {e}") from e
    if text in ("", "complete"):
        return None
    try:
        files = json.loads(text)["files"]
        if not all(isinstance(r["bytes"], int) and isinstance(r["sha256"], str) for r in files.values()):
            raise TypeError("a file record lacks bytes or sha256")
        if not all(name == Path(name).name and name not in ("", ".", "..") for name in files):
            raise ValueError("a recorded name is not a file of the checkpoint directory")
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"checkpoint {dir}: {DONE_FILE}: unreadable completion marker ({e})") from e
    return files


def verify_checkpoint(dir: Path, skip: tuple[str, ...] = ()) -> None:
    """Check every file ``DONE`` records (except ``skip``) against its recorded size, then its sha256.

    A checkpoint written before checksums were recorded passes unverified (said at debug level).

    Raises:
        InputError: no ``DONE``, a damaged marker, or files missing, of the wrong size or with another
            checksum; the message names the checkpoint, each file and what is wrong.
    """
    dir = Path(dir)
    files = recorded_files(dir)
    if files is None:
        logger.debug("checkpoint %s records no checksums (written before they were); not verified", dir)
        return
    names = [name for name in files if name not in skip]
    problems = []
    for name in names:  # sizes first: cheap, and a truncated or emptied file needs no hashing
        path, want = dir / name, files[name]["bytes"]
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (size := path.stat().st_size) != want:
            problems.append(f"{name}: size mismatch (recorded {want} bytes, found {size})")
    if not problems:
        for name in names:
            try:
                found = sha256_file(dir / name)
            except OSError as e:
                problems.append(f"{name}: unreadable ({e})")
                continue
            if found != files[name]["sha256"]:
                want = files[name]["sha256"]
                problems.append(
                    f"{name}: checksum mismatch (recorded sha256 {want[:12]}…, found {found[:12]}…)"
                )
    if problems:
        raise InputError(f"checkpoint {dir} is damaged: {'; '.join(problems)}")


def _stage_hint(dir: Path) -> str:
    """How to rebuild the checkpoint ``dir``: re-run the stage whose directory holds it."""
    stage_dir = Path(dir).resolve().parent.parent  # <stage>/ckpt/step_N
    manifest = read_manifest(stage_dir) if (stage_dir / MANIFEST).is_file() else None
    if isinstance(manifest, dict) and manifest.get("instance"):
        instance = manifest["instance"]
        return (
            f"re-run stage {instance!r} ({manifest.get('stage', '?')}, {stage_dir}): "
            f"`lmforge run RECIPE --force --only {instance}`, or delete it and run again"
        )
    return "re-run the stage that wrote it (delete its directory and run it again)"


def load_config(dir: Path) -> ModelConfig:
    """The ``ModelConfig`` of a complete checkpoint, without reading its weights.

    Raises:
        InputError: missing directory, no ``DONE``, or an unreadable or invalid config.
    """
    config_path = require_complete(dir) / CONFIG_FILE
    try:
        return ModelConfig.from_dict(json.loads(config_path.read_text()))
    except (OSError, json.JSONDecodeError, ConfigError) as e:
        raise InputError(f"cannot read model config {config_path}: {e}") from e


def load_model(dir: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the ``Decoder`` of a complete checkpoint, weights loaded and tied as saved.

    The model is returned on ``device`` in training mode (the ``nn.Module`` default). Every file the
    marker records except ``train_state.pt`` is verified first (``verify_checkpoint``).

    Raises:
        InputError: missing directory, no ``DONE``, a damaged file (the message names it and the stage
            to re-run), unreadable or invalid config, or weights that do not match the config.
    """
    dir = Path(dir)
    try:
        verify_checkpoint(dir, skip=(TRAIN_STATE_FILE,))
    except InputError as e:
        raise InputError(f"{e}; {_stage_hint(dir)}") from e
    cfg = load_config(dir)
    config_path = dir / CONFIG_FILE
    state = load_weights(dir, cfg)
    model = build_model(cfg, state_keys=set(state))
    for key in tied_keys(model):
        state.pop(key, None)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = set(missing) - tied_keys(model)
        if missing or unexpected:
            raise RuntimeError(f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")
    except RuntimeError as e:
        raise InputError(f"weights in {dir / MODEL_FILE} do not match {config_path}: {e}") from e
    return model.to(device), cfg


def tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys of parameters that are the same tensor as an earlier key (tied weights)."""
    seen: dict[int, str] = {}
    tied = set()
    for key, value in model.state_dict(keep_vars=True).items():
        ident = id(value)
        if ident in seen:
            tied.add(key)
        else:
            seen[ident] = key
    return tied


def build_model(cfg: ModelConfig, *, nsp: bool = False, state_keys: set[str] | None = None) -> nn.Module:
    """An untrained model of ``cfg.arch``: ``Decoder``, or ``EncoderForPretraining`` with an NSP head when
    ``nsp`` or when a checkpoint's ``state_keys`` hold one."""
    if cfg.arch == "encoder":
        nsp = nsp or any(k.startswith("nsp_head.") for k in state_keys or ())
        return EncoderForPretraining(cfg, nsp=nsp)
    return Decoder(cfg)


def load_weights(dir: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The full state dict of a checkpoint on CPU, with the tied ``lm_head.weight`` key restored.

    Raises:
        InputError: unreadable weights file.
    """
    try:
        state = load_file(str(Path(dir) / MODEL_FILE), device="cpu")
    except (OSError, RuntimeError, SafetensorError) as e:
        raise InputError(f"cannot read weights {Path(dir) / MODEL_FILE}: {e}") from e
    if cfg.arch == "decoder" and cfg.tie_embeddings and TIED_SOURCE in state:
        state.setdefault(TIED_KEY, state[TIED_SOURCE])  # copied into the one shared tensor
    if cfg.arch == "encoder" and "encoder.tok_emb.weight" in state:
        state.setdefault("mlm_head.decoder.weight", state["encoder.tok_emb.weight"])
    return state


def complete_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """``(step, dir)`` of every ``step_N`` directory with ``DONE`` under ``ckpt_root``, by step."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = []
    for child in ckpt_root.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and (child / DONE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The complete ``step_N`` directory with the highest N, or None.

    Directories without ``DONE``, ``.tmp``/``.old`` leftovers and other names are ignored.
    """
    found = complete_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def resolve_checkpoint(path: Path, which: str = "best") -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint itself, a ``ckpt`` root or a stage dir.

    For a root (``path/ckpt`` or ``path``) the ``which`` entry (``"best"`` or ``"last"``) of its
    ``final.json`` is used; without ``final.json`` (an unfinished stage) the latest complete checkpoint.

    Raises:
        ValueError: ``which`` is neither ``"best"`` nor ``"last"``.
        InputError: nothing under ``path`` is a complete checkpoint, or ``final.json`` is unreadable or
            names one that is missing or incomplete.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    path = Path(path)
    if (path / DONE_FILE).is_file():
        return path
    root = path / "ckpt" if (path / "ckpt").is_dir() else path
    final = root / FINAL_FILE
    if final.is_file():
        try:
            name = json.loads(final.read_text())[which]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"cannot read {which!r} from {final}: {e}") from e
        return require_complete(root / str(name))
    latest = latest_checkpoint(root)
    if latest is None:
        raise InputError(f"no complete checkpoint (a directory with {DONE_FILE}) at {path}")
    logger.warning("%s has no %s; using the latest complete checkpoint %s", root, FINAL_FILE, latest.name)
    return latest


def write_final(ckpt_root: Path, *, last: str, best: str, **extra: Any) -> None:
    """``ckpt_root/final.json`` naming the last and best checkpoints (read by ``resolve_checkpoint``),
    written atomically; ``extra`` adds plain fields (step, stop reason, source)."""
    write_json_atomic(Path(ckpt_root) / FINAL_FILE, {"last": last, "best": best, **extra})


def read_meta(dir: Path) -> dict[str, Any]:
    """A checkpoint's ``finetune.json`` (method, pooling, labels), or ``{}`` when it has none.

    Raises:
        InputError: the file exists but is not a JSON object.
    """
    path = Path(dir) / META_FILE
    if not path.is_file():
        return {}
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta
