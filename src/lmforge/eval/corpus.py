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
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

PASSAGE_FIELD = {"squad": "context", "boolq": "passage"}


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
