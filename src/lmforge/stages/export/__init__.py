"""Export a checkpoint for other tools: ``lmforge export <method> [RECIPE.yaml] [--key value ...]``.

Each method is its own stage program (a module here with ``Config``, ``INPUTS`` and ``main``); its stage
kind is ``export.<method>``. ``hf`` writes a Hugging Face directory (Llama, Qwen2, Qwen3 or Gemma),
``gguf`` a llama.cpp GGUF file; docs/interop.md says what exports, what is refused and why.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

# method → (module, one line)
METHODS: dict[str, tuple[str, str]] = {
    "hf": ("lmforge.stages.export.hf", "Hugging Face transformers directory (Llama, Qwen2, Qwen3 or Gemma)"),
    "gguf": ("lmforge.stages.export.gguf", "GGUF file (llama architecture) for llama.cpp-family tools"),
}

INPUTS: tuple[str, ...] = ()

USAGE = """usage: lmforge export <method> [RECIPE.yaml] [--key value | key=value ...] [-q | -v]

Export a decoder checkpoint (a checkpoint directory or a training stage directory such as runs/x/sft).

methods:
{table}

`lmforge export <method> --help` lists the method's options. In a recipe a method is the stage kind
`export.<method>`:   export-hf: {{stage: export.hf, model: "@sft"}}
"""


def refuse_early(model: str, out: str, which: str) -> None:
    """Raise ConfigError if the checkpoint ``model`` (resolved as the run store will) cannot be exported,
    before the run store creates anything; a missing or unfinished input is left for it to report."""
    from lmforge.errors import InputError
    from lmforge.interop.hf_export import check_exportable, read_checkpoint_config
    from lmforge.model.checkpoint import resolve_checkpoint
    from lmforge.runstore import resolve_ref

    try:
        ckpt = resolve_checkpoint(resolve_ref(model, Path(out).expanduser().resolve()), which)
    except InputError:
        return
    check_exportable(read_checkpoint_config(ckpt))


def method_module(method: str) -> ModuleType:
    """The stage module of ``method`` (a key of ``METHODS``)."""
    return importlib.import_module(METHODS[method][0])


def cli(argv: list[str]) -> int:
    """``lmforge export <method> ...``: dispatch to the method's stage program."""
    from lmforge.stages.invoke import dispatch

    return dispatch("export", METHODS, USAGE, argv)
