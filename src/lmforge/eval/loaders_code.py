"""Code-generation problems as ``Doc``\\ s: HumanEval, MBPP, and MBPP's training split in HumanEval's form.

- HumanEval gz jsonl ``{task_id, prompt, canonical_solution, test, entry_point}`` (Chen et al. 2021):
  the prompt (imports, signature, docstring) is the query and the start of the program; the program is
  ``prompt + completion + test + check(entry_point)``. HumanEval has no training split.
- MBPP jsonl ``{task_id, text, code, test_list, test_setup_code}`` (Austin et al. 2021): the prompt of
  the MBPP paper as lm-evaluation-harness words it (task text, its 3 asserts, ``[BEGIN]``; the code ends
  at ``[DONE]``); the program is ``completion + test_setup_code + test_list``. Split by task id as the
  paper does: 11-510 test, 1-10 few-shot prompts, 511-600 validation, 601-974 train.
- ``mbpp_as_humaneval``: MBPP problems rewritten as HumanEval prompts (the code before the function the
  tests call, its ``def`` line, a docstring of the task text and its asserts; the target is the rest of
  the code), so HumanEval gets a training split to fine-tune and fit baselines on: MBPP's.

``Doc.fields`` (read by the classic baselines, ``eval/classic/code.py``): ``task_id``, ``text`` (the
description: MBPP's text, HumanEval's docstring up to its first ``>>>`` example), ``entry_point`` (the function the tests call: MBPP's
from its asserts, HumanEval's given), ``params`` (HumanEval-form docs: the entry point's arguments, as a
call passes them), and, for MBPP, ``code`` (the record's reference program, which a baseline reads on
the training split only; HumanEval docs carry no code field).
"""

from __future__ import annotations

import ast
import builtins
import warnings
from pathlib import Path

from lmforge.errors import InputError
from lmforge.eval.records import Doc, read_records

MBPP_SPLITS = {"test": (11, 510), "prompt": (1, 10), "validation": (511, 600), "train": (601, 974)}
_BUILTINS = frozenset(dir(builtins))


def parse(code: str) -> ast.Module:
    """``ast.parse`` without the warnings old code raises (MBPP's invalid escapes such as ``"\\d"``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def called_function(tests: list[str]) -> str:
    """The function ``tests`` (assert statements) call: the first called plain name, in reading order,
    that is not a builtin (or, when every called name is a builtin, the first: MBPP 126 defines ``sum``).

    Raises:
        InputError: the tests call no function.
    """
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            names.append(node.func.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for t in tests:
        visit(parse(t))
    if not names:
        raise InputError(f"tests call no function: {tests[:1]}")
    return next((n for n in names if n not in _BUILTINS), names[0])


def call_params(fn: ast.FunctionDef) -> list[str]:
    """The arguments of ``fn`` as a call forwarding them passes them: ``a``, ``*rest``, ``k=k``, ``**kw``."""
    a = fn.args
    out = [p.arg for p in a.posonlyargs + a.args]
    if a.vararg:
        out.append(f"*{a.vararg.arg}")
    out += [f"{p.arg}={p.arg}" for p in a.kwonlyargs]
    if a.kwarg:
        out.append(f"**{a.kwarg.arg}")
    return out


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _description(docstring: str) -> str:
    """A docstring up to its first ``>>>`` example."""
    return docstring.split(">>>")[0].strip()


def humaneval(path: Path, split: str = "test") -> list[Doc]:
    """HumanEval (one split, ``test``): the prompt is the query and the start of the program; the
    test ends with ``check``."""
    if split != "test":
        raise InputError(f"humaneval has only a test split, not {split!r}")
    docs = []
    for r in read_records(path):
        fn = _function(parse(r["prompt"]), r["entry_point"])
        if fn is None:
            raise InputError(f"{path}: {r['task_id']}: the prompt defines no {r['entry_point']}()")
        fields = {
            "task_id": r["task_id"],
            "text": _description(ast.get_docstring(fn) or ""),
            "entry_point": r["entry_point"],
            "params": call_params(fn),
        }
        docs.append(
            Doc(
                r["prompt"],
                references=[r["canonical_solution"]],
                test=f"{r['test']}\n\ncheck({r['entry_point']})\n",
                code_prefix=r["prompt"],
                fields=fields,
            )
        )
    return docs


def _mbpp_records(path: Path, split: str) -> list[dict]:
    if split not in MBPP_SPLITS:
        raise InputError(f"mbpp split {split!r}: expected one of {', '.join(MBPP_SPLITS)}")
    first, last = MBPP_SPLITS[split]
    return [r for r in read_records(path) if first <= int(r["task_id"]) <= last]


def _mbpp_fields(r: dict) -> dict:
    return {
        "task_id": int(r["task_id"]),
        "text": r["text"],
        "entry_point": called_function(r["test_list"]),
        "code": r["code"].replace("\r\n", "\n"),
    }


def mbpp(path: Path, split: str = "test") -> list[Doc]:
    """MBPP problems of ``split`` (``MBPP_SPLITS``; module docstring)."""
    docs = []
    for r in _mbpp_records(path, split):
        tests = "\n".join(r["test_list"])
        query = (
            f"You are an expert Python programmer, and here is your task: {r['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
        )
        fields = _mbpp_fields(r)
        setup = r.get("test_setup_code") or ""
        docs.append(
            Doc(query, references=[f"{fields['code']}\n[DONE]"], test=f"{setup}\n{tests}\n", fields=fields)
        )
    return docs


def mbpp_as_humaneval(path: Path, split: str = "train") -> list[Doc]:
    """MBPP problems of ``split`` as HumanEval prompts (module docstring); problems whose tests call a
    function their code does not define at the top level are skipped."""
    docs = []
    for r in _mbpp_records(path, split):
        fields = _mbpp_fields(r)
        code = fields["code"]
        fn = _function(parse(code), fields["entry_point"])
        if fn is None:
            continue
        lines = code.split("\n")
        body = fn.body[0].lineno - 1  # first line of the body (0-based)
        indent = lines[body][: len(lines[body]) - len(lines[body].lstrip())] or "    "
        if fn.body[0].lineno == fn.lineno:  # one-line function: def f(x): return x
            continue
        tests = "\n".join(r["test_list"])
        doc_lines = [r["text"].strip(), *(t.replace("assert ", ">>> ", 1) for t in r["test_list"])]
        docstring = "".join(f"{indent}{line}\n" for line in doc_lines).replace('"""', "'''")
        prefix = "\n".join(lines[:body]) + f'\n{indent}"""{docstring.lstrip()}{indent}"""\n'
        target = "\n".join(lines[body:]).rstrip() + "\n"
        setup = r.get("test_setup_code") or ""
        fields["params"] = call_params(fn)
        docs.append(
            Doc(prefix, references=[target], test=f"{setup}\n{tests}\n", code_prefix=prefix, fields=fields)
        )
    return docs
