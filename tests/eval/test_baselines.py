"""Classic baselines as eval systems: which tasks they apply to, output checks, and that their outputs
go through the same scorer as the model's (hand-computed metrics)."""

from __future__ import annotations

import pytest

from lmforge.config import ConfigError
from lmforge.eval import baselines
from lmforge.eval.baselines import Baseline, check_outputs, get_baseline
from lmforge.eval.records import Doc
from lmforge.eval.tasks import Task, evaluate_baseline


def _yes_no(n_yes: int, n_no: int, fields: dict | None = None) -> list[Doc]:
    golds = [0] * n_yes + [1] * n_no
    return [Doc(f"q{i}", ["yes", "no"], g, fields=dict(fields or {})) for i, g in enumerate(golds)]


def test_majority_picks_the_training_splits_most_frequent_answer_by_text() -> None:
    pool = _yes_no(2, 5)  # "no" is the majority
    docs = _yes_no(3, 1) + [Doc("flipped", ["no", "yes"], 0)]  # the text is found whatever its position
    task = Task("yn", "multiple_choice", docs, pool)
    r = evaluate_baseline(get_baseline("majority"), task)
    # picks "no" everywhere: right on doc 3 (no) and doc 4 (flipped, gold 0 = "no") -> 2 of 5
    assert r["metrics"] == {"acc": pytest.approx(2 / 5)}
    assert "acc_norm" not in r["metrics"]  # a baseline has no length-normalised pick


def test_generation_outputs_are_scored_like_the_models() -> None:
    docs = [
        Doc("a", references=["the cat"], fields={"hint": "The cat!"}),  # normalises to an exact match
        # "a dog" normalises to "dog" (articles dropped): P 1/2, R 1/1, F1 2/3; "dogs" shares nothing
        Doc("b", references=["a dog", "dogs"], fields={"hint": "big dog"}),
    ]
    echo = Baseline(
        "echo", ("generation",), ("hint",), lambda t: [d.fields["hint"] for d in t.docs], "echo", False
    )
    task = Task("gen", "generation", docs, metrics=("exact_match", "f1"))
    m = evaluate_baseline(echo, task)["metrics"]
    assert m["exact_match"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_applies_needs_kind_fields_and_a_training_split() -> None:
    b = Baseline("b", ("multiple_choice",), ("passage",), lambda t: [0] * len(t.docs), "b")
    with_fields = _yes_no(1, 1, {"passage": "p"})
    assert b.applies(Task("t", "multiple_choice", with_fields, _yes_no(1, 0, {"passage": "p"})))
    assert not b.applies(Task("t", "multiple_choice", with_fields))  # no training split
    assert not b.applies(Task("t", "multiple_choice", _yes_no(1, 1), _yes_no(1, 0)))  # no field
    assert not b.applies(Task("t", "generation", with_fields, with_fields))  # kind
    with pytest.raises(ValueError, match="does not apply"):
        evaluate_baseline(b, Task("t", "multiple_choice", with_fields))


def test_malformed_outputs_are_refused() -> None:
    b = Baseline("b", ("multiple_choice", "generation", "code"), (), lambda t: [], "b", False)
    mc = Task("t", "multiple_choice", _yes_no(1, 1))
    with pytest.raises(ValueError, match="1 outputs for 2"):
        check_outputs(b, mc, [0])
    with pytest.raises(ValueError, match="not valid"):
        check_outputs(b, mc, [0, 2])  # only two choices
    with pytest.raises(ValueError, match="not valid"):
        check_outputs(b, Task("g", "generation", [Doc("q", references=["x"])]), [3])
    with pytest.raises(ValueError, match="not valid"):
        check_outputs(b, Task("c", "code", [Doc("q", references=["x"])]), [[]])


def test_unknown_baseline_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown baseline 'nope'.*majority"):
        get_baseline("nope")
    assert "majority" in baselines.BASELINES
