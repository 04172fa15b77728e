"""Code-sampling options (the rule, the override of a task's defaults, the eval stage's options) and
YAML code task files, down to an eval-stage run of a tiny checkpoint beside the retrieval baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import from_dict
from lmforge.errors import ConfigError
from lmforge.eval.codegen import check_sampling, score_completions, with_sampling
from lmforge.eval.records import Doc
from lmforge.eval.sandbox import Limits
from lmforge.eval.tasks import Task, load_task
from lmforge.stages import eval as eval_stage

QUICK = Limits(wall_s=8, cpu_s=2, memory_mb=512)


def test_check_sampling_rule() -> None:
    check_sampling(1, 0.0, None, (1,))
    check_sampling(10, 0.8, 0.95, (1, 10))
    with pytest.raises(ConfigError, match="pass@5 needs at least 5 samples"):
        check_sampling(3, 0.8, None, (1, 5))
    with pytest.raises(ConfigError, match="temperature 0"):
        check_sampling(4, 0.0, None, (1,))
    with pytest.raises(ConfigError, match="top_p"):
        check_sampling(1, 0.5, 0.0, (1,))
    with pytest.raises(ConfigError, match="ks"):
        check_sampling(2, 0.5, None, ())


def _code_task() -> Task:
    return Task("toy", "code", [Doc("p", test="assert True\n")], until=("\n",))


def test_with_sampling_overrides_the_tasks_defaults() -> None:
    t = with_sampling(_code_task(), samples=5, temperature=0.7, top_p=0.9)
    assert (t.samples, t.temperature, t.top_p, t.ks) == (5, 0.7, 0.9, (1,))
    t = with_sampling(t, ks=(1, 5))
    assert t.ks == (1, 5) and t.samples == 5
    ten = with_sampling(_code_task(), samples=10, temperature=0.8, ks=(1, 10))
    assert with_sampling(ten, samples=4).ks == (1,)  # the task's pass@10 needs 10: dropped
    with pytest.raises(ConfigError, match="task toy: temperature 0"):
        with_sampling(_code_task(), samples=3)  # the task is greedy
    with pytest.raises(ConfigError, match="sampling options are for code"):
        with_sampling(Task("g", "generation", [Doc("q", references=["a"])]), samples=2)


def test_eval_stage_options_are_validated() -> None:
    base = {"tasks": ["x.yaml"]}
    cfg = from_dict(eval_stage.Config, {**base, "samples": 4, "temperature": 0.8, "top_p": 1.0, "ks": [1, 4]})
    assert cfg.code_sampling() == {"samples": 4, "temperature": 0.8, "top_p": None, "ks": (1, 4)}
    assert from_dict(eval_stage.Config, base).code_sampling() == {}
    for bad, match in [
        ({"samples": 2, "ks": [1, 5], "temperature": 1.0}, "pass@5 needs at least 5"),
        ({"samples": 3, "temperature": 0.0}, "temperature 0"),
        ({"top_p": 1.5}, "top_p"),
        ({"samples": -1}, "samples"),
        ({"ks": [0]}, "ks"),
    ]:
        with pytest.raises(ConfigError, match=match):
            from_dict(eval_stage.Config, {**base, **bad})


@pytest.fixture()
def code_tasks(tmp_path: Path) -> Path:
    """An MBPP-style YAML task (asserts, whole programs) and a HumanEval-style one (prefix, check)."""
    mb = [
        {"text": "Write a function to add two numbers.", "tests": ["assert add(2, 3) == 5"],
         "code": "def add(a, b):\n    return a + b\n"},
        {"text": "Write a function to double a number.", "tests": ["assert dbl(4) == 8"],
         "code": "def dbl(x):\n    return 2 * x\n"},
    ]  # fmt: skip
    train = [
        {"text": "Write a function to sum two numbers.", "tests": ["assert plus(1, 1) == 2"],
         "code": "def plus(x, y):\n    return x + y\n"},
        {"text": "Write a function to triple a number.", "tests": ["assert tri(1) == 3"],
         "code": "def tri(n):\n    return 3 * n\n"},
    ]  # fmt: skip
    for name, rows in (("mb.jsonl", mb), ("mb_train.jsonl", train)):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "mb.yaml").write_text(
        "kind: code\npath: mb.jsonl\nfewshot_path: mb_train.jsonl\ntemplate: '{text}\\n'\n"
        "test: tests\nanswer: code\ntarget_delimiter: ''\nuntil: ['[DONE]']\nmax_new_tokens: 8\n"
    )
    he = [
        {"prompt": "def neg(x):\n    '''Negate x.'''\n", "name": "neg", "body": "    return -x\n",
         "test": "def check(candidate):\n    assert candidate(2) == -2\n"},
    ]  # fmt: skip
    (tmp_path / "he.jsonl").write_text("\n".join(json.dumps(r) for r in he))
    (tmp_path / "he.yaml").write_text(
        "kind: code\npath: he.jsonl\ntemplate: '{prompt}'\nprefix: prompt\nentry_point: name\ncheck: true\n"
        "answer: body\ntarget_delimiter: ''\nuntil: [\"\\ndef\"]\nsamples: 2\ntemperature: 0.5\nks: [1, 2]\n"
    )
    return tmp_path


def test_yaml_code_tasks_load_and_score(code_tasks: Path) -> None:
    mb = load_task(str(code_tasks / "mb.yaml"))
    assert mb.kind == "code" and mb.docs[0].fields["entry_point"] == "add"
    assert "code" not in mb.docs[0].fields and mb.docs[0].references == ["def add(a, b):\n    return a + b\n"]
    right = [[d.references[0]] for d in mb.docs]
    assert score_completions(mb.docs, right, until=mb.until, limits=QUICK)["metrics"]["pass@1"] == 1.0
    he = load_task(str(code_tasks / "he.yaml"))
    assert (he.samples, he.temperature, he.ks, he.top_p) == (2, 0.5, (1, 2), None)
    doc = he.docs[0]
    assert doc.code_prefix.startswith("def neg(x):") and doc.test.endswith("check(neg)\n")
    assert he.until == ("\ndef",)  # YAML's double quotes make a newline
    out = score_completions(he.docs, [["    return -x\n", "    return x\n"]], ks=(1, 2), limits=QUICK)
    assert out["metrics"]["pass@1"] == 0.5 and out["metrics"]["pass@2"] == 1.0
    bad = code_tasks / "bad.yaml"
    bad.write_text("kind: code\npath: he.jsonl\nsamples: 3\n")
    with pytest.raises(ConfigError, match="temperature 0"):
        load_task(str(bad))
    bad.write_text("kind: code\npath: he.jsonl\ncheck: true\n")
    with pytest.raises(ConfigError, match="entry_point"):
        load_task(str(bad))


def test_eval_stage_samples_override_and_retrieval_column(code_tasks: Path, one_torch_thread: None) -> None:
    """A tiny untrained checkpoint on the YAML MBPP-style task with 3 sampled completions per problem;
    the retrieval baseline (fitted on the task's training file) is a column beside it: the nearest
    training programs (sum -> add, triple -> double ...) renamed."""
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    tok = train_bpe(["def f(x):\n    return x + 1\n"] * 20, vocab_size=300)
    torch.manual_seed(0)
    mcfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(
        code_tasks / "m", build_model(mcfg), mcfg, tokenizer_path=save_tokenizer(tok, code_tasks / "t")
    )
    options = {
        "model": str(code_tasks / "m"),
        "tokenizer": "",
        "out": str(code_tasks / "eval"),
        "tasks": [str(code_tasks / "mb.yaml")],
        "samples": 3,
        "temperature": 1.0,
        "ks": [1, 3],
    }
    manifest = eval_stage.main(from_dict(eval_stage.Config, {**options, "baselines": ["code-retrieval"]}))
    assert manifest["config"]["unsafe_exec"] is False  # how the programs ran is on record
    m = manifest["metrics"]
    assert m["mb_0shot_pass@1"] == 0.0 and m["mb_0shot_pass@3"] == 0.0  # 8 random tokens define nothing
    assert m["mb_0shot_frac_failed"] + m["mb_0shot_frac_error"] == 1.0
    # 3 neighbours each (the pool has 2: the last repeats); add <- plus passes, add <- tri and
    # dbl <- tri (12 != 8) or plus (two arguments) fail
    assert m["baseline_code-retrieval_mb_pass@1"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["baseline_code-retrieval_mb_pass@3"] == pytest.approx(0.5)
    (code_tasks / "yn.jsonl").write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}))
    (code_tasks / "yn.yaml").write_text("path: yn.jsonl\n")
    options.update(tasks=[str(code_tasks / "yn.yaml")], out=str(code_tasks / "e2"))
    with pytest.raises(ConfigError, match="applies to code tasks"):
        eval_stage.main(from_dict(eval_stage.Config, options))
