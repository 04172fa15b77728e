"""Fine-tune any lmforge checkpoint: ``lmforge finetune <method> [RECIPE.yaml] [--key value ...]``.

Each method is its own stage program (a module here with ``Config``, ``INPUTS`` and ``main``); its
stage kind is ``finetune.<method>``, which is what a recipe names (``stage: finetune.classify``) and
what the manifest records. The shared options (base model, steps, learning rate and schedule, weight
decay, L1, dropout, early stopping) are ``training.options.FinetuneOptions``; docs/finetune.md
describes every method.
"""
