"""pass@k against hand-computed values; the code scorer on right and wrong hand-written completions and
on HumanEval / MBPP canonical solutions; the code task end to end through a tiny model and the engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lmforge.eval.codegen import build_program, code_reward, score_completions, trim_completion
from lmforge.eval.metrics import mean_pass_at_k, pass_at_k
from lmforge.eval.records import Doc
from lmforge.eval.sandbox import Limits
from lmforge.eval.tasks import LM, Task, evaluate_task, load_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
NEEDS_DATA = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)"
)
QUICK = Limits(wall_s=8, cpu_s=2, memory_mb=512)


def test_pass_at_k_hand_computed() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(3, 3, 1) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0  # n - c < k: every draw of 4 holds the right one
    # large n: the product form equals the exact binomial ratio, with no overflow
    n, c, k = 200, 13, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_mean_pass_at_k_and_bad_input() -> None:
    m = mean_pass_at_k([(5, 2), (5, 0), (10, 10)], ks=(1, 2, 10))
    assert m["pass@1"] == pytest.approx((0.4 + 0 + 1) / 3)
    assert m["pass@2"] == pytest.approx((0.7 + 0 + 1) / 3)
    assert "pass@10" not in m  # the smallest n is 5
    with pytest.raises(ValueError, match="n=3, c=4"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k=0"):
        pass_at_k(3, 1, 0)


def test_trim_and_build_program() -> None:
    assert trim_completion("    return 1\ndef g():\n  pass", ("\ndef", "\nclass")) == "    return 1"
    doc = Doc("def f():\n", test="assert f() == 1\n", code_prefix="def f():\n")
    assert (
        build_program(doc, "    return 1\nprint('x')", ("\nprint",))
        == "def f():\n    return 1\n\nassert f() == 1\n"
    )
    mbpp_like = Doc("task [BEGIN]\n", test="assert g() == 2\n")
    assert build_program(mbpp_like, " def g():\n    return 2\n[DONE] junk", ("[DONE]",)).startswith(
        "def g():"
    )


def test_scorer_on_right_wrong_and_hostile_completions() -> None:
    docs = [
        Doc("add", test="assert add(2, 3) == 5\nassert add(-1, 1) == 0\n", code_prefix="def add(a, b):\n"),
        Doc("neg", test="assert neg(4) == -4\n", code_prefix="def neg(x):\n"),
    ]
    completions = [
        ["    return a + b\n", "    return a - b\n", "    while True:\n        pass\n"],
        ["    return -x\n", "    return x\n", "    return bytearray(2 * 1024**3)\n"],  # memory limit
    ]
    out = score_completions(docs, completions, ks=(1, 2, 3), limits=Limits(wall_s=4, cpu_s=1), workers=2)
    statuses = [[r.status for r in rs] for rs in out["results"]]
    assert statuses == [["passed", "failed", "timeout"], ["passed", "failed", "error"]]
    m = out["metrics"]
    assert m["pass@1"] == pytest.approx(1 / 3) and m["pass@2"] == pytest.approx(1 - 1 / 3)
    assert m["pass@3"] == 1.0
    assert m["frac_passed"] == pytest.approx(2 / 6) and m["frac_timeout"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="differ in length"):
        score_completions(docs, completions[:1])


@NEEDS_DATA
def test_humaneval_and_mbpp_canonical_solutions_pass_and_wrong_ones_fail() -> None:
    he = load_task("humaneval", data_dir=SHARED, limit=3)
    assert he.kind == "code" and "check(" in he.docs[0].test and he.docs[0].query == he.docs[0].code_prefix
    right = [[d.references[0]] for d in he.docs]
    wrong = [["    return None\n"] for _ in he.docs]
    assert score_completions(he.docs, right, until=he.until, limits=QUICK)["metrics"]["pass@1"] == 1.0
    assert score_completions(he.docs, wrong, until=he.until, limits=QUICK)["metrics"]["pass@1"] == 0.0
    mbpp = load_task("mbpp", data_dir=SHARED, limit=3)
    assert mbpp.docs[0].query.endswith("[BEGIN]\n") and len(mbpp.fewshot_pool) == 374
    right = [[d.references[0]] for d in mbpp.docs]
    assert score_completions(mbpp.docs, right, until=mbpp.until, limits=QUICK)["metrics"]["pass@1"] == 1.0
    wrong = [["def nothing():\n    pass\n"] for _ in mbpp.docs]
    assert score_completions(mbpp.docs, wrong, until=mbpp.until, limits=QUICK)["metrics"]["pass@1"] == 0.0


def test_code_task_through_a_tiny_model() -> None:
    """Completions come from the engine (3 samples per problem); each lands in a comment line, so the
    outcome is fixed by the problem: the first passes whatever is sampled, the second never does."""
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder
    from lmforge.tokenizer.train import train_bpe

    tok = train_bpe(["def f(): return 1 # a comment about cats and dogs"] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = Decoder(
        ModelConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=16)
    )
    docs = [
        Doc("p", test="assert f() == 1\n", code_prefix="def f():\n    return 1\n# "),
        Doc("q", test="assert f() == 1\n", code_prefix="def f():\n    return 2\n# "),
    ]
    task = Task(
        "toy",
        "code",
        docs,
        until=("\n",),
        max_new_tokens=6,
        samples=3,
        temperature=1.0,
        ks=(1, 3),
        limits=QUICK,
    )
    r = evaluate_task(LM(model, tok, bos_id=0), task)
    assert r["metrics"]["pass@1"] == pytest.approx(0.5) and r["metrics"]["pass@3"] == pytest.approx(0.5)
    assert len(r["tables"][0]["rows"]) == 3  # the second problem's three samples failed


def test_code_reward() -> None:
    doc = Doc("sq", test="assert sq(3) == 9\n", code_prefix="def sq(x):\n")
    assert code_reward(doc, "    return x * x\n", limits=QUICK) == 1.0
    assert code_reward(doc, "    return x + x\n", limits=QUICK) == 0.0
    reach_out = (
        "    import socket\n    socket.create_connection(('192.0.2.1', 80), timeout=1)\n    return 9\n"
    )
    assert code_reward(doc, reach_out, limits=QUICK) == 0.0  # no network in the sandbox: it raises


@pytest.mark.usefixtures("bwrap_sandbox")
@pytest.mark.parametrize(
    "body",
    [
        "    import sys\n    sys.exit(0)\n",  # a SystemExit from the function the tests call
        "    import os\n    os._exit(0)\n",  # ends the process with no cleanup at all
        "    raise SystemExit\n",
    ],
)
def test_ending_the_process_before_the_tests_finish_is_not_a_pass(body: str) -> None:
    """The cheapest reward hack on code: exit with status 0 from inside the function under test."""
    doc = Doc("def add(a, b):\n", test="assert add(2, 3) == 5\n", code_prefix="def add(a, b):\n")
    result = score_completions([doc], [[body, "    return a + b\n"]])["results"][0]
    assert [r.status for r in result] == ["failed", "passed"]
    assert "before its tests finished" in result[0].reason
    assert code_reward(doc, body) == 0.0 and code_reward(doc, "    return a + b\n") == 1.0
