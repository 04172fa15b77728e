"""Align a model to preferences or verifiable rewards: ``lmforge align <method> [RECIPE.yaml] [--key value ...]``.

Each method is its own stage program (a module here with ``Config``, ``INPUTS`` and ``main``); its
stage kind is ``align.<method>``, which is what a recipe names (``stage: align.dpo``) and what the
manifest records. docs/align.md describes every method.
"""
