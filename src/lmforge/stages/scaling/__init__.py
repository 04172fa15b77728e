"""Scaling laws: ``lmforge scaling sweep|fit|predict [RECIPE.yaml] [--key value ...]``.

A package of methods, like ``finetune`` and ``align``, rather than one module with a ``method`` field:
the three steps take different inputs (a tokenizer, a sweep, a fit) and different options, so each is
its own stage program with its own ``Config``, ``INPUTS`` and cache key, and a recipe chains them
through ``@`` inputs (``stage: scaling.sweep``, ``scaling.fit``, ``scaling.predict``). The math lives
in ``lmforge.scaling``; docs/scaling.md describes the method and the measured CPU run.
"""
