"""The text of an evaluation task's training split, as pretraining data (data source ``task:NAME@DIR``).

A recipe that fine-tunes on a task (``finetune.task``) often wants its tokenizer and pretraining to
have seen the task's kind of text — French for a translation task, Wikipedia passages for SQuAD —
without any of the test documents. ``task_texts`` yields, for each document of the task's training
split (``Task.fewshot_pool``), one text:

- for tasks whose documents carry a passage (``PASSAGE_FIELD``: SQuAD's ``context``, BoolQ's
  ``passage``), the passage itself, each distinct passage once (a SQuAD passage has ~5 questions);
- otherwise the example as ``finetune.task`` renders it: the zero-shot prompt, the target delimiter
  and the target (for a translation task, ``English: ...\\nFrench: ...``).

Identical texts are yielded once. The test split (``Task.docs``) is never read for its text.

``task_pairs`` turns a task into retrieval pairs for ``finetune contrastive`` (``train:
task:squad@DIR``; ``PAIR_FIELDS``): each question → the passage it was asked about (SQuAD, BoolQ), or
each problem statement → its reference solution (MBPP: code search). The training split's pairs are for
training and the test split's are held out; the tasks' own splits (SQuAD by article, BoolQ by page
title, ``eval/loaders_qa.py``; MBPP's published task-id ranges) keep every passage on one side, and a held-out passage that also occurs
in training (none does in the shipped files) is dropped from the held-out pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.sources import TaskSource
from lmforge.data.supervised import Pair
from lmforge.errors import ConfigError
from lmforge.eval.loaders import BUILTIN

logger = logging.getLogger(__name__)

PASSAGE_FIELD = {"squad": "context", "boolq": "passage"}
# task → (query field, target field) of the retrieval pairs task_pairs makes
PAIR_FIELDS = {
    **{task: ("question", field) for task, field in PASSAGE_FIELD.items()},
    "mbpp": ("text", "code"),
}


def task_texts(name: str, data_dir: str | Path = "") -> Iterator[str]:
    """The training-split texts of the task ``name`` (a built-in name, data under ``data_dir``, or a
    YAML task file).

    Raises:
        ConfigError: an unknown task.
        InputError: the task has no training split, or its data is missing or malformed.
    """
    from lmforge.errors import InputError
    from lmforge.eval.fewshot import build_prompt
    from lmforge.eval.tasks import load_task

    task = load_task(name, data_dir=data_dir)
    if not task.fewshot_pool:
        raise InputError(f"task {task.name} has no training split to take text from")
    field = PASSAGE_FIELD.get(task.name)
    seen: set[str] = set()
    for doc in task.fewshot_pool:
        if field is not None and field in doc.fields:
            text = str(doc.fields[field])
        else:
            text = build_prompt(doc.query, [], task.fmt) + task.fmt.target_delimiter + doc.target
        if text.strip() and text not in seen:
            seen.add(text)
            yield text


TASK_SOURCE = TaskSource(names=BUILTIN, texts=task_texts)  # what data sources read ``task:`` specs with


def task_pairs(name: str, data_dir: str | Path) -> tuple[list[Pair], list[Pair]]:
    """``(training pairs, held-out pairs)`` of (question, passage) from the built-in task ``name``
    (a key of ``PAIR_FIELDS``), data under ``data_dir`` (module docstring).

    Raises:
        ConfigError: a task whose documents carry no passage.
        InputError: the task's data is missing or malformed.
    """
    from lmforge.eval.tasks import load_task  # eval.tasks imports torch; data-source checks stay light

    if name not in PAIR_FIELDS:
        raise ConfigError(
            "train", f"task {name!r} has no passages to retrieve; pair tasks: {', '.join(PAIR_FIELDS)}"
        )
    task = load_task(name, data_dir=data_dir)
    query, field = PAIR_FIELDS[name]

    def pairs(docs: list, split: str) -> list[Pair]:
        return [
            Pair(str(d.fields[query]), str(d.fields[field]), f"task:{name}:{split}:{i}")
            for i, d in enumerate(docs)
        ]

    train, held = pairs(task.fewshot_pool or [], "train"), pairs(task.docs, "test")
    seen = {p.b for p in train}
    kept = [p for p in held if p.b not in seen]
    if len(kept) < len(held):
        logger.warning(
            "task %s: %d held-out pairs dropped, their passage is in training", name, len(held) - len(kept)
        )
    return train, kept
