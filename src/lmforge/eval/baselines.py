"""Classic baselines as systems of the eval stage: the model's column and theirs, scored alike.

A ``Baseline`` answers the documents of a task without a language model: it fits on the task's
training split (``Task.fewshot_pool``) and returns one output per document of ``Task.docs`` (its test
split), which ``tasks.evaluate_baseline`` scores with exactly the scorer the model's outputs go
through (``tasks.score_outputs``). A baseline reads the structured ``Doc.fields`` of each record,
never the rendered prompt, and never the references or gold labels of the documents it answers.

Outputs per document, by task kind:

- ``generation``: the predicted text (``str``), scored by the task's metrics (EM/F1, BLEU/chrF, ROUGE);
- ``multiple_choice`` / ``classification``: the index of the chosen ``doc.choices`` entry (``int``);
- ``code``: a list of completions (``list[str]``), each run with the problem's tests in the sandbox.

``BASELINES`` maps a name to ``"module:attribute"``; the module is imported only when the baseline is
used, so its libraries stay optional. ``lmforge eval ... baselines=[name, ...]`` runs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmforge.config import ConfigError

if TYPE_CHECKING:
    from lmforge.eval.tasks import Task


@dataclass(frozen=True)
class Baseline:
    """A classic system: the task kinds it answers, the ``Doc.fields`` it reads, and ``run``."""

    name: str
    kinds: tuple[str, ...]
    needs: tuple[str, ...]
    run: Callable[[Task], list[Any]]
    help: str
    train: bool = True  # fits on ``task.fewshot_pool`` (the task's training split)

    def applies(self, task: Task) -> bool:
        """Whether this baseline can answer ``task``: its kind, its fields, and a training split."""
        if task.kind not in self.kinds or not task.docs:
            return False
        if self.train and not task.fewshot_pool:
            return False
        docs = task.docs + (task.fewshot_pool or []) if self.train else task.docs
        return all(k in d.fields for d in docs for k in self.needs)


def _majority(task: Task) -> list[Any]:
    """Each document's choice whose text is the training split's most frequent answer (by text, so
    it works when choices are label words such as yes/no), else the most frequent answer position."""
    from collections import Counter

    pool = task.fewshot_pool or []
    texts = Counter(d.choices[d.gold] for d in pool)
    positions = Counter(d.gold for d in pool)
    ranked = [t for t, _ in texts.most_common()]
    position = positions.most_common(1)[0][0]
    out = []
    for doc in task.docs:
        pick = next((doc.choices.index(t) for t in ranked if t in doc.choices), None)
        out.append(pick if pick is not None else min(position, len(doc.choices) - 1))
    return out


MAJORITY = Baseline(
    "majority",
    ("multiple_choice", "classification"),
    (),
    _majority,
    "the training split's most frequent answer",
)

# name -> "module:attribute" of a Baseline (imported on use)
BASELINES: dict[str, str] = {
    "majority": "lmforge.eval.baselines:MAJORITY",
    "code-retrieval": "lmforge.eval.classic.code:RETRIEVAL",
    "sliding-window": "lmforge.eval.classic.qa:SLIDING_WINDOW",
    "bow-qa": "lmforge.eval.classic.qa:BOW_QA",
    "ibm1": "lmforge.eval.classic.translate:IBM1_WORDS",
    "copy": "lmforge.eval.classic.translate:COPY",
    "name-template": "lmforge.eval.classic.summarize:NAME_TEMPLATE",
    "tfidf-nn": "lmforge.eval.classic.summarize:TFIDF_NN",
    "lead-k": "lmforge.eval.classic.summarize:LEAD_K",
    "textrank": "lmforge.eval.classic.summarize:TEXTRANK",
}


def get_baseline(name: str) -> Baseline:
    """The baseline called ``name``.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    if name not in BASELINES:
        known = ", ".join(sorted(BASELINES)) or "none"
        raise ConfigError("baselines", f"unknown baseline {name!r}; known: {known}")
    module, attr = BASELINES[name].split(":")
    baseline = getattr(importlib.import_module(module), attr)
    if not isinstance(baseline, Baseline):
        raise TypeError(f"{BASELINES[name]} is not a Baseline")
    return baseline


def check_outputs(baseline: Baseline, task: Task, outputs: list[Any]) -> None:
    """Raise ``ValueError`` unless ``outputs`` has one well-typed output per document of ``task``."""
    if len(outputs) != len(task.docs):
        raise ValueError(f"baseline {baseline.name}: {len(outputs)} outputs for {len(task.docs)} documents")
    for i, (out, doc) in enumerate(zip(outputs, task.docs)):
        if task.kind == "generation":
            ok = isinstance(out, str)
        elif task.kind == "code":
            ok = isinstance(out, list) and all(isinstance(c, str) for c in out) and bool(out)
        else:
            ok = isinstance(out, int) and 0 <= out < len(doc.choices)
        if not ok:
            raise ValueError(
                f"baseline {baseline.name}: output {i} ({out!r:.60}) is not valid for a {task.kind} task"
            )
