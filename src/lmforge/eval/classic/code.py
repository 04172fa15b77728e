"""Classic code-generation baseline: submit the nearest training problem's reference program.

``code-retrieval`` (``eval/baselines.py``) is what a retrieval system without a language model would
submit for a problem: the reference program of the training problem whose description is nearest to
this one's, with its function renamed to the one the tests call.

1. Index the training split (``Task.fewshot_pool``; for MBPP task ids 601-974, for HumanEval the same
   MBPP problems, since HumanEval has none) by TF-IDF (scikit-learn, unigrams and bigrams, sublinear
   term frequency, l2-normalised) over ``fields["text"]`` (the description) plus the words of
   ``fields["entry_point"]`` (``min_cost`` → ``min cost``).
2. For each evaluated problem, rank the training problems by cosine similarity of the same text
   (ties: the earlier training problem) and take the ``task.samples`` nearest (each sample a different
   neighbour, so pass@k with k > 1 counts the k nearest).
3. Rename the neighbour's function (``fields["entry_point"]`` of the training problem, its definition
   and its recursive calls, through the syntax tree) to the evaluated problem's ``entry_point``.
   A problem without a code prefix (MBPP) gets the renamed program as it is. A problem whose prompt
   already opens the function (HumanEval) gets a body for it: the renamed program nested inside,
   then ``return name(params)`` forwarding the prompt's arguments (``fields["params"]``) — so the
   program is scored by the very scorer and stop strings the model's completions go through.

It reads ``fields["code"]`` of the training problems only (for a YAML task, whose fields hold no
answer: a training problem's code prefix and reference); of the evaluated ones, their description,
entry point and arguments (what the prompt shows), never their reference solution.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lmforge.eval.baselines import Baseline
from lmforge.eval.codegen import trim_completion
from lmforge.eval.loaders_code import parse
from lmforge.eval.records import Doc

if TYPE_CHECKING:
    from lmforge.eval.tasks import Task


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if node.name == self.old:
            node.name = self.new
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.old:
            node.id = self.new
        return node


def rename_function(code: str, old: str, new: str) -> str:
    """``code`` with the function ``old`` (its definition and every use of the name) called ``new``;
    re-printed from its syntax tree (comments dropped, 4-space indentation). Code that does not parse
    is renamed textually."""
    try:
        tree = parse(code)
    except SyntaxError:
        return re.sub(rf"\b{re.escape(old)}\b", new, code)
    if old != new:
        tree = _Rename(old, new).visit(tree)
    return ast.unparse(tree) + "\n"


def program_of(doc: Doc, until: Sequence[str] = ()) -> str:
    """A training problem's reference program: ``fields["code"]``, else (YAML tasks, whose fields hold
    no answer) its code prefix and first reference cut at the stop strings."""
    if "code" in doc.fields:
        return doc.fields["code"]
    return doc.code_prefix + trim_completion(doc.references[0], until)


def submission(source: Doc, target: Doc, until: Sequence[str] = ()) -> str:
    """The completion submitted for ``target``: ``source``'s program, renamed (module docstring, step 3)."""
    name = target.fields["entry_point"]
    program = rename_function(program_of(source, until), source.fields["entry_point"], name)
    if not target.code_prefix:
        return program
    args = ", ".join(target.fields.get("params", []))
    return textwrap.indent(program, "    ") + f"    return {name}({args})\n"


def _text(doc: Doc) -> str:
    return f"{doc.fields['text']} {doc.fields['entry_point'].replace('_', ' ')}"


def nearest(pool: list[Doc], docs: list[Doc], n: int) -> list[list[int]]:
    """For each of ``docs``, the indices of its ``n`` nearest ``pool`` problems (module docstring, 1-2)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    index = vec.fit_transform([_text(d) for d in pool])
    sims = (vec.transform([_text(d) for d in docs]) @ index.T).toarray()  # [docs, pool] cosine
    return [list(np.argsort(-row, kind="stable")[:n]) for row in sims]


def run_retrieval(task: Task) -> list[list[str]]:
    """One list of ``task.samples`` completions per document of ``task`` (module docstring)."""
    pool = [d for d in task.fewshot_pool or [] if "code" in d.fields or d.references]
    if not pool:
        raise ValueError(f"task {task.name}: no training problem with a reference program to retrieve")
    picks = nearest(pool, task.docs, min(task.samples, len(pool)))
    out = []
    for doc, ids in zip(task.docs, picks):
        subs = [submission(pool[j], doc, task.until) for j in ids]
        out.append(subs + subs[-1:] * (task.samples - len(subs)))  # a pool smaller than samples
    return out


RETRIEVAL = Baseline(
    "code-retrieval",
    ("code",),
    ("text", "entry_point"),
    run_retrieval,
    "code: the TF-IDF-nearest training problem's reference program, its function renamed",
)
