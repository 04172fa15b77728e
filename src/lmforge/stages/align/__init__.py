"""Align a model to preferences or verifiable rewards: ``lmforge align <method> [RECIPE.yaml] [--key value ...]``.

Each method is its own stage program (a module here with ``Config``, ``INPUTS`` and ``main``); its
stage kind is ``align.<method>``, which is what a recipe names (``stage: align.dpo``) and what the
manifest records. docs/align.md describes every method.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# method → (module, one line)
METHODS: dict[str, tuple[str, str]] = {
    "collect": (
        "lmforge.stages.align.collect",
        "sample replies and serve a web page where people rank them (JSONL store)",
    ),
    "label": (
        "lmforge.stages.align.label",
        "on-policy preference pairs: sample replies, a reward model picks the best and the worst",
    ),
    "dpo": ("lmforge.stages.align.dpo", "direct preference optimisation (or IPO) on chosen/rejected pairs"),
    "reward": (
        "lmforge.stages.align.reward",
        "reward model (Bradley–Terry on pairs or Plackett–Luce on rankings)",
    ),
    "ppo": (
        "lmforge.stages.align.ppo",
        "PPO-RLHF: rollouts scored by a reward model, value head, GAE, KL penalty",
    ),
    "grpo": (
        "lmforge.stages.align.grpo",
        "GRPO with verifiable rewards (arithmetic #### N answers, or a code task's tests in the sandbox)",
    ),
    "split": (
        "lmforge.stages.align.split",
        "split preference files by prompt: training / held-out pairs, SFT replies, pretraining text",
    ),
    "arithmetic": (
        "lmforge.stages.align.arithmetic",
        "write generated arithmetic problems (SFT and GRPO files)",
    ),
}

INPUTS: tuple[str, ...] = ()

USAGE = """usage: lmforge align <method> [RECIPE.yaml] [--key value | key=value ...] [-q | -v]

Align a checkpoint (a checkpoint directory or a training stage directory such as runs/x/sft).

methods:
{table}

`lmforge align <method> --help` lists the method's options. In a recipe a method is the stage kind
`align.<method>`:   dpo: {{stage: align.dpo, model: "@sft", train: [pairs.jsonl]}}
The loop with people in it: collect (rank replies in a browser) → reward → dpo or ppo → collect
again with the new policy (docs/align.md, "Iterating").
"""


def method_module(method: str) -> ModuleType:
    """The stage module of ``method`` (a key of ``METHODS``)."""
    return importlib.import_module(METHODS[method][0])


def cli(argv: list[str]) -> int:
    """``lmforge align <method> ...``: dispatch to the method's stage program."""
    from lmforge.stages.invoke import dispatch

    return dispatch("align", METHODS, USAGE, argv)
