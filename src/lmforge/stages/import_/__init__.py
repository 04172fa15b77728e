"""Import a model from another tool: ``lmforge import <method> [RECIPE.yaml] [--key value ...]``.

The package is ``import_`` because ``import`` is a Python keyword. Each method is its own stage program
(a module here with ``Config``, ``INPUTS`` and ``main``); its stage kind is ``import.<method>``. ``hf``
reads a local Hugging Face decoder directory (Llama, GPT-2, Qwen2, Qwen3, Mistral, Gemma);
docs/interop.md describes it.
"""
