"""The code-retrieval baseline on hand-built problems (entry point from asserts, renaming, nearest pick,
MBPP and HumanEval forms through the sandbox scorer), and the code loaders' splits and fields."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lmforge.eval.baselines import get_baseline
from lmforge.eval.classic.code import nearest, rename_function, submission
from lmforge.eval.loaders_code import call_params, called_function
from lmforge.eval.records import Doc
from lmforge.eval.sandbox import Limits
from lmforge.eval.tasks import Task, evaluate_baseline, load_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
NEEDS_DATA = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)"
)
QUICK = Limits(wall_s=8, cpu_s=2, memory_mb=512)


def test_called_function_from_asserts() -> None:
    assert called_function(["assert min_cost([[1, 2]], 2, 2) == 8"]) == "min_cost"
    assert called_function(["assert set(similar((3, 4), (4, 5))) == set((4,))"]) == "similar"
    assert called_function(["assert math.isclose(area(2), 12.56, rel_tol=0.01)"]) == "area"
    assert called_function(["assert sum(10, 15) == 6"]) == "sum"  # MBPP 126 shadows the builtin
    assert called_function(["assert len(x) == 1", "assert f(x) == 2"]) == "f"


def test_call_params() -> None:
    fn = ast.parse("def f(a, /, b, *rest, k=1, **kw): pass").body[0]
    assert call_params(fn) == ["a", "b", "*rest", "k=k", "**kw"]


def test_rename_function_renames_definition_and_recursive_calls_only() -> None:
    code = "def fact(n):\n\treturn 1 if n < 2 else n * fact(n - 1)\ndef other(fact_x):\n\treturn fact_x\n"
    out = rename_function(code, "fact", "factorial")
    assert "fact(" not in out.replace("factorial(", "") and "def other(fact_x)" in out
    env: dict = {}
    exec(out, env)  # noqa: S102 - our own hand-written program
    assert env["factorial"](5) == 120 and "fact" not in env


def _pool() -> list[Doc]:
    def doc(text: str, name: str, code: str) -> Doc:
        return Doc(text, references=["unused"], fields={"text": text, "entry_point": name, "code": code})

    return [
        doc("Write a function to add two numbers.", "add_nums", "def add_nums(a, b):\n    return a + b\n"),
        doc(
            "Write a function to reverse a string.",
            "rev_str",
            "def rev_str(s):\n    return rev_str2(s)\ndef rev_str2(s):\n    return s[::-1]\n",
        ),
        doc("Write a function to multiply two numbers.", "mul", "def mul(a, b):\n    return a * b\n"),
    ]


def test_nearest_ranks_by_description() -> None:
    pool = _pool()
    q = [
        Doc(
            "", fields={"text": "Write a python function that reverses the given string.", "entry_point": "r"}
        ),
        Doc("", fields={"text": "Multiply two numbers and return the product.", "entry_point": "m"}),
    ]
    picks = nearest(pool, q, 2)
    assert picks[0][0] == 1 and picks[1][0] == 2
    assert len(set(picks[0])) == 2


def test_mbpp_form_program_is_renamed_and_passes_its_tests() -> None:
    pool = _pool()
    doc = Doc(
        "prompt",
        test="assert reverse_string('abc') == 'cba'\n",
        fields={"text": "Write a function to reverse a given string.", "entry_point": "reverse_string"},
    )
    program = submission(pool[1], doc)
    assert "def reverse_string(s)" in program and "rev_str(" not in program
    task = Task("toy", "code", [doc], pool, until=("[DONE]",), limits=QUICK)
    r = evaluate_baseline(get_baseline("code-retrieval"), task)
    assert r["metrics"]["pass@1"] == 1.0
    # the wrong neighbour, renamed alike, fails the same tests
    wrong = Task("toy", "code", [doc], [pool[0]], until=("[DONE]",), limits=QUICK)
    assert evaluate_baseline(get_baseline("code-retrieval"), wrong)["metrics"]["pass@1"] == 0.0


def test_humaneval_form_body_forwards_the_prompt_arguments() -> None:
    """With a prompt that opens the function, the neighbour's program is nested and called; the
    HumanEval stop strings (column-0 def/class/#/if/print) do not cut it."""
    prefix = 'def product(x, y):\n    """Multiply x by y."""\n'
    doc = Doc(
        prefix,
        test="def check(candidate):\n    assert candidate(3, 4) == 12\n\ncheck(product)\n",
        code_prefix=prefix,
        fields={"text": "Multiply x by y.", "entry_point": "product", "params": ["x", "y"]},
    )
    task = Task(
        "toy",
        "code",
        [doc],
        _pool(),
        until=("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
        samples=3,
        ks=(1, 3),
    )
    task.limits = QUICK
    outputs = get_baseline("code-retrieval").run(task)
    assert outputs[0][0].endswith("    return product(x, y)\n") and len(set(outputs[0])) == 3
    r = evaluate_baseline(get_baseline("code-retrieval"), task)
    assert r["metrics"]["pass@1"] == pytest.approx(1 / 3) and r["metrics"]["pass@3"] == 1.0


def test_baseline_does_not_apply_without_a_training_split() -> None:
    doc = Doc("p", test="", fields={"text": "t", "entry_point": "f"})
    assert not get_baseline("code-retrieval").applies(Task("toy", "code", [doc], None))
    assert get_baseline("code-retrieval").applies(Task("toy", "code", [doc], _pool()))


@NEEDS_DATA
def test_mbpp_splits_fields_and_humaneval_training_split() -> None:
    mbpp = load_task("mbpp", data_dir=SHARED)
    assert len(mbpp.docs) == 500 and len(mbpp.fewshot_pool) == 374
    assert mbpp.docs[0].fields["task_id"] == 11 and mbpp.fewshot_pool[0].fields["task_id"] == 601
    assert mbpp.docs[0].fields["entry_point"] == "remove_Occ"
    he = load_task("humaneval", data_dir=SHARED, limit=2)
    assert he.docs[0].fields["entry_point"] == "has_close_elements"
    assert he.docs[0].fields["params"] == ["numbers", "threshold"] and "code" not in he.docs[0].fields
    assert ">>>" not in he.docs[0].fields["text"]
    # the training split: MBPP 601-974 as HumanEval prompts, canonical bodies pass under HumanEval's stops
    from lmforge.eval.codegen import score_completions

    pool = he.fewshot_pool[:12]
    assert pool[0].code_prefix.rstrip().endswith('"""') and pool[0].fields["task_id"] == 601
    right = [[d.references[0]] for d in pool]
    assert score_completions(pool, right, until=he.until, limits=QUICK)["metrics"]["pass@1"] == 1.0
    out = get_baseline("code-retrieval").run(he)
    assert all(len(o) == 1 and o[0].rstrip().endswith(")") for o in out)
    for d, o in zip(he.docs, out):
        ast.parse(d.code_prefix + o[0])  # a well-formed program
