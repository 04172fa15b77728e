"""``lmforge finetune task``: task documents become prompt + target examples with the loss on the
target only (tokenised as the eval stage scores it), the model learns the task, and eval loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import ConfigError, from_dict
from lmforge.stages.finetune import task as task_stage

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red"}


def _task(root: Path) -> Path:
    rows = [{"thing": t, "answer": c} for t, c in COLOURS.items()]
    (root / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "colours_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 8))
    (root / "colours.yaml").write_text(
        "kind: generation\npath: colours.jsonl\nfewshot_path: colours_train.jsonl\n"
        'template: "What colour is {thing}?\\nAnswer:"\nmetrics: [exact_match]\nmax_new_tokens: 12\n'
    )
    return root / "colours.yaml"


def test_examples_supervise_the_target_and_stop_string_only(ft_dir: Path, tmp_path: Path) -> None:
    from lmforge.eval.tasks import load_task, pair_ids
    from lmforge.tokenizer.train import load_tokenizer, special_id

    tok = load_tokenizer(ft_dir / "tokenizer.json")
    task = load_task(str(_task(tmp_path)))
    cfg = from_dict(task_stage.Config, {"tasks": [str(tmp_path / "colours.yaml")], "val_fraction": 0.25})
    train, val, counts = task_stage.task_examples(cfg, [task], tok, 64)
    assert counts["train_examples"] + counts["val_examples"] == 40 and counts["val_examples"] > 0
    bos = special_id(tok, "<|bos|>")
    expected = {c: pair_ids(tok, bos, f"What colour is {t}?\nAnswer:", f" {c}\n") for t, c in COLOURS.items()}
    for ids, mask in train + val:
        target = tok.decode([i for i, m in zip(ids, mask) if m]).strip()
        ctx, cont = expected[target]  # the masked tokens are exactly one answer (+ the stop string)
        assert ids == ctx + cont and mask == [0] * len(ctx) + [1] * len(cont)
    longest = max(len(c) for _, c in expected.values())
    short = task_stage.task_examples(cfg, [task], tok, longest + 3)[0]  # prompts cut from the left
    for ids, mask in short:
        ctx, cont = expected[tok.decode([i for i, m in zip(ids, mask) if m]).strip()]
        assert ids == (ctx + cont)[-(longest + 4) :] and sum(mask) == len(cont)
    shortest = min(len(c) for _, c in expected.values())
    with pytest.raises(ConfigError, match="no usable examples"):
        task_stage.task_examples(cfg, [task], tok, shortest)  # no target fits


def test_the_model_learns_the_task_and_eval_scores_it(ft_dir: Path, tmp_path: Path) -> None:
    from lmforge.stages import eval as eval_stage

    spec = _task(tmp_path)
    cfg = from_dict(
        task_stage.Config,
        {
            "model": str(ft_dir / "decoder"),
            "tasks": [str(spec)],
            "out": str(tmp_path / "task"),
            "max_steps": 150,
            "batch_size": 8,
            "lr": 1e-2,
            "warmup_steps": 5,
            "eval_every": 50,
            "val_fraction": 0.2,
            "packing": "pad",
        },
    )
    m = task_stage.main(cfg)["metrics"]
    assert m["val_loss"] < 0.5 * m["base_val_loss"] and m["colours_train_examples"] > 0
    ev = from_dict(
        eval_stage.Config,
        {
            "model": str(tmp_path / "task"),
            "tokenizer": "",
            "out": str(tmp_path / "eval"),
            "tasks": [str(spec)],
        },
    )
    assert eval_stage.main(ev)["metrics"]["colours_0shot_exact_match"] == 1.0


def test_a_task_without_a_training_split_is_refused(ft_dir: Path, tmp_path: Path) -> None:
    from lmforge.eval.tasks import load_task
    from lmforge.tokenizer.train import load_tokenizer

    (tmp_path / "t.jsonl").write_text(json.dumps({"q": "x", "answer": "y"}) + "\n")
    (tmp_path / "t.yaml").write_text("kind: generation\npath: t.jsonl\ntemplate: '{q}'\n")
    cfg = from_dict(task_stage.Config, {"tasks": [str(tmp_path / "t.yaml")]})
    tok = load_tokenizer(ft_dir / "tokenizer.json")
    with pytest.raises(ConfigError, match="no training split"):
        task_stage.task_examples(cfg, [load_task(str(tmp_path / "t.yaml"))], tok, 64)
    with pytest.raises(ConfigError, match="at least one task"):
        from_dict(task_stage.Config, {})
    with pytest.raises(ConfigError, match="data_dir"):
        from_dict(task_stage.Config, {"tasks": ["squad"]})


def test_a_target_that_already_ends_with_the_stop_string_does_not_get_it_twice(
    ft_dir: Path, tmp_path: Path
) -> None:
    from lmforge.eval.tasks import load_task
    from lmforge.tokenizer.train import load_tokenizer

    rows = [{"q": "say good", "answer": "good [DONE]"}, {"q": "say bad", "answer": "bad"}] * 4
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.yaml").write_text(
        "kind: generation\npath: d.jsonl\nfewshot_path: d.jsonl\ntemplate: '{q}'\nuntil: ['[DONE]']\n"
    )
    cfg = from_dict(task_stage.Config, {"tasks": [str(tmp_path / "d.yaml")], "val_fraction": 0.25})
    tok = load_tokenizer(ft_dir / "tokenizer.json")
    train, val, _ = task_stage.task_examples(cfg, [load_task(str(tmp_path / "d.yaml"))], tok, 64)
    targets = {tok.decode([i for i, m in zip(ids, mask) if m]) for ids, mask in train + val}
    assert targets == {" good [DONE]", " bad[DONE]"}
