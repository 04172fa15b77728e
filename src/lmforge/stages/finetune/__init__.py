"""Fine-tune any lmforge checkpoint: ``lmforge finetune <method> [RECIPE.yaml] [--key value ...]``.

Each method is its own stage program (a module here with ``Config``, ``INPUTS`` and ``main``); its
stage kind is ``finetune.<method>``, which is what a recipe names (``stage: finetune.classify``) and
what the manifest records. The shared options (base model, steps, learning rate and schedule, weight
decay, L1, dropout, early stopping) are ``training.options.FinetuneOptions``; docs/finetune.md
describes every method.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# method → (module, one line)
METHODS: dict[str, tuple[str, str]] = {
    "sft": (
        "lmforge.stages.finetune.sft",
        "supervised fine-tuning on chat / instruction data (assistant tokens)",
    ),
    "lora": ("lmforge.stages.finetune.lora", "SFT with LoRA adapters (PEFT layout; optionally merged)"),
    "classify": ("lmforge.stages.finetune.classify", "sequence classification head + bag-of-words baseline"),
    "multitask": ("lmforge.stages.finetune.multitask", "one shared trunk, one classification head per task"),
    "dapt": ("lmforge.stages.finetune.dapt", "domain-adaptive continued pretraining with replay"),
    "contrastive": ("lmforge.stages.finetune.contrastive", "sentence embeddings with InfoNCE on pairs"),
    "ner": ("lmforge.stages.finetune.ner", "token classification (NER) + lookup and CRF baselines"),
    "qa": ("lmforge.stages.finetune.qa", "extractive QA: a span head on an encoder, SQuAD EM/F1"),
    "task": (
        "lmforge.stages.finetune.task",
        "learn eval tasks' training splits in their zero-shot prompt format",
    ),
}

INPUTS: tuple[str, ...] = ()

USAGE = """usage: lmforge finetune <method> [RECIPE.yaml] [--key value | key=value ...] [-q | -v]

Fine-tune a checkpoint (a checkpoint directory or a training stage directory such as runs/x/pretrain).

methods:
{table}

`lmforge finetune <method> --help` lists the method's options. In a recipe a method is the stage kind
`finetune.<method>`:   classify: {{stage: finetune.classify, model: "@pretrain", train: ...}}
"""


def method_module(method: str) -> ModuleType:
    """The stage module of ``method`` (a key of ``METHODS``)."""
    return importlib.import_module(METHODS[method][0])


def cli(argv: list[str]) -> int:
    """``lmforge finetune <method> ...``: dispatch to the method's stage program."""
    from lmforge.stages.invoke import dispatch

    return dispatch("finetune", METHODS, USAGE, argv)
