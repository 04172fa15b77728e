"""Import a model from another tool: ``lmforge import <method> [RECIPE.yaml] [--key value ...]``.

The package is ``import_`` because ``import`` is a Python keyword. Each method is its own stage program
(a module here with ``Config``, ``INPUTS`` and ``main``); its stage kind is ``import.<method>``. ``hf``
reads a local Hugging Face decoder directory (Llama, GPT-2, Qwen2, Qwen3, Mistral, Gemma);
docs/interop.md describes it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# method → (module, one line)
METHODS: dict[str, tuple[str, str]] = {
    "hf": (
        "lmforge.stages.import_.hf",
        "a local Hugging Face decoder directory (Llama, GPT-2, Qwen2/3, Mistral, Gemma) → a checkpoint",
    ),
}

INPUTS: tuple[str, ...] = ()

USAGE = """usage: lmforge import <method> [RECIPE.yaml] [--key value | key=value ...] [-q | -v]

Import a model as an lmforge checkpoint that fine-tuning, eval, generate and serve read.

methods:
{table}

`lmforge import <method> --help` lists the method's options. Nothing is downloaded: --model is a local
directory (e.g. one written by transformers' save_pretrained).
"""


def method_module(method: str) -> ModuleType:
    """The stage module of ``method`` (a key of ``METHODS``)."""
    return importlib.import_module(METHODS[method][0])


def cli(argv: list[str]) -> int:
    """``lmforge import <method> ...``: dispatch to the method's stage program."""
    from lmforge.stages.invoke import dispatch

    return dispatch("import", METHODS, USAGE, argv)
