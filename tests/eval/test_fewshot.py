"""k-shot prompt assembly: layout, deterministic seeded selection, no self-shots."""

from __future__ import annotations

import pytest

from lmforge.eval.fewshot import PromptFormat, build_prompt, select_shots
from lmforge.eval.records import Doc
from lmforge.eval.tasks import Task, prompts


def test_build_prompt_layout() -> None:
    fmt = PromptFormat(instruction="Answer the questions.", example_separator="\n\n", target_delimiter=" ")
    got = build_prompt("Q: 3+3?\nA:", [("Q: 1+1?\nA:", "2"), ("Q: 2+2?\nA:", "4")], fmt)
    assert got == "Answer the questions.\n\nQ: 1+1?\nA: 2\n\nQ: 2+2?\nA: 4\n\nQ: 3+3?\nA:"
    assert build_prompt("Q", [], PromptFormat()) == "Q"  # zero-shot, no instruction
    assert build_prompt("Q", [("a", "b")], PromptFormat("", "###", "=")) == "a=b###Q"


def test_selection_is_seeded_deterministic_and_excludes_the_doc() -> None:
    pool = list(range(20))
    a = select_shots(pool, 5, seed=1, index=3, same_split=True)
    assert a == select_shots(pool, 5, seed=1, index=3, same_split=True)
    assert a != select_shots(pool, 5, seed=2, index=3, same_split=True)
    assert 3 not in a and len(set(a)) == 5
    assert all(3 not in select_shots(pool, 19, seed=s, index=3, same_split=True) for s in range(5))
    with pytest.raises(ValueError, match="pool holds only 19"):
        select_shots(pool, 20, seed=0, index=0, same_split=True)
    assert select_shots(pool, 0, seed=0, index=0, same_split=True) == []


def test_task_prompts_use_targets_and_are_independent_of_the_doc_subset() -> None:
    docs = [Doc(f"Q{i}:", ["no", "yes"], i % 2) for i in range(10)]
    task = Task("t", "multiple_choice", docs)
    p = prompts(task, k=2, seed=0)
    assert p[0].endswith("\n\nQ0:") and p[0].count("\n\n") == 2
    for line in p[0].split("\n\n")[:-1]:
        i = int(line.split(":")[0][1:])
        assert line == f"Q{i}: {'yes' if i % 2 else 'no'}"
    pooled = Task("t", "multiple_choice", docs[:3], fewshot_pool=docs)
    assert prompts(pooled, k=3, seed=0)[0].count("\n\n") == 3
