"""Scaling laws: ``lmforge scaling sweep|fit|predict [RECIPE.yaml] [--key value ...]``.

A package of methods, like ``finetune`` and ``align``, rather than one module with a ``method`` field:
the three steps take different inputs (a tokenizer, a sweep, a fit) and different options, so each is
its own stage program with its own ``Config``, ``INPUTS`` and cache key, and a recipe chains them
through ``@`` inputs (``stage: scaling.sweep``, ``scaling.fit``, ``scaling.predict``). The math lives
in ``lmforge.scaling``; docs/scaling.md describes the method and the measured CPU run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# method → (module, one line)
METHODS: dict[str, tuple[str, str]] = {
    "sweep": ("lmforge.stages.scaling.sweep", "train a grid of model sizes × token budgets (cached points)"),
    "fit": (
        "lmforge.stages.scaling.fit",
        "fit Kaplan and Chinchilla laws, bootstrap intervals, optimal N, D",
    ),
    "predict": (
        "lmforge.stages.scaling.predict",
        "predict a larger model's loss from a fit; train it and report the error (check)",
    ),
}

INPUTS: tuple[str, ...] = ()

USAGE = """usage: lmforge scaling <method> [RECIPE.yaml] [--key value | key=value ...] [-q | -v]

Measure scaling laws on your corpus: sweep a grid of small decoders, fit L(N, D), predict a larger one.

methods:
{table}

`lmforge scaling <method> --help` lists the method's options. In a recipe a method is the stage kind
`scaling.<method>`:   fit: {{stage: scaling.fit, sweep: "@sweep"}}   (see recipes/scaling-cpu.yaml)
"""


def method_module(method: str) -> ModuleType:
    """The stage module of ``method`` (a key of ``METHODS``)."""
    return importlib.import_module(METHODS[method][0])


def cli(argv: list[str]) -> int:
    """``lmforge scaling <method> ...``: dispatch to the method's stage program."""
    from lmforge.stages.invoke import dispatch

    return dispatch("scaling", METHODS, USAGE, argv)
