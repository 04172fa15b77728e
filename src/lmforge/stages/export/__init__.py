"""Export a checkpoint for other tools: ``lmforge export <method> [RECIPE.yaml] [--key value ...]``.

Each method is its own stage program (a module here with ``Config``, ``INPUTS`` and ``main``); its stage
kind is ``export.<method>``. ``hf`` writes a Hugging Face directory (Llama, Qwen2, Qwen3 or Gemma),
``gguf`` a llama.cpp GGUF file; docs/interop.md says what exports, what is refused and why.
"""

from __future__ import annotations

from pathlib import Path


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
