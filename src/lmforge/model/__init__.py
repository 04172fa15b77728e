"""The model: ``ModelConfig`` (input fields, validation, presets), the ``Decoder`` and its ``KVCache``.

Names are re-exported lazily (PEP 562), so ``from lmforge.model.config import ModelConfig`` (e.g. by
the config loader) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "lmforge.model.config",
    "preset": "lmforge.model.config",
    "Decoder": "lmforge.model.decoder",
    "count_params": "lmforge.model.decoder",
    "KVCache": "lmforge.model.kv_cache",
    "LoraConfig": "lmforge.model.lora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmforge.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
