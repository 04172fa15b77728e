"""Each alignment method runs from the command line on tiny generated data (a few steps each)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.stages.registry import methods


def run_cli(*args: str) -> None:
    assert main(["align", *args, "-q", "--device", "cpu", "--threads", "1"]) == 0


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_align_help_lists_methods(capsys):
    assert main(["align", "--help"]) == 0
    text = capsys.readouterr().out
    for method in methods("align"):
        assert method in text
    assert main(["align", "dpx"]) == 2
    assert "did you mean 'dpo'" in capsys.readouterr().err.lower()
    assert main(["align", "dpo", "--help"]) == 0
    assert "--beta" in capsys.readouterr().out


def test_dpo_cli(align_dir, tmp_path):
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    out = tmp_path / "dpo"
    run_cli(
        "dpo",
        "--model", str(align_dir / "decoder"),
        "--train", str(align_dir / "prefs.jsonl"),
        "--out", str(out),
        "--max_steps", "6",
        "--eval_every", "3",
        "--lr", "3e-3",
        "--beta", "0.5",
    )  # fmt: skip
    m = manifest(out)
    assert m["stage"] == "align.dpo"
    metrics = m["metrics"]
    assert metrics["base_val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["val_loss"] < metrics["base_val_loss"]
    assert metrics["skipped_records"] == 1  # the "not json" line
    assert 0 <= metrics["reward_accuracy"] <= 1
    load_model(resolve_checkpoint(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward_margin" in r and "val_loss" not in r]
    assert [r["step"] for r in train] == list(range(1, 7)) and all("reward_accuracy" in r for r in train)
    evals = [r for r in rows if "select_loss" in r and "final" not in r]
    assert [r["step"] for r in evals] == [0, 3, 6] and all("kl" in r for r in evals)
    assert evals[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy is the reference at step 0


def test_dpo_lora_cli_judged_by_a_reward_model(align_dir, reward_dir, tmp_path):
    out = tmp_path / "dpo-lora"
    run_cli(
        "dpo",
        "--reward_model", str(reward_dir),
        "--n_judge", "4",
        "--judge_tokens", "4",
        "--model", str(align_dir / "decoder"),
        "--train", str(align_dir / "prefs.jsonl"),
        "--out", str(out),
        "--max_steps", "2",
        "--lora_r", "4",
        "--lr", "1e-2",
    )  # fmt: skip
    final = json.loads((out / "ckpt" / "final.json").read_text())
    assert (out / "ckpt" / final["best"] / "adapter" / "adapter_model.safetensors").is_file()
    metrics = manifest(out)["metrics"]
    assert metrics["base_val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert 0 <= metrics["dpo_win_rate"] <= 1 and "dpo_kl" in metrics and "dpo_base_score" in metrics


def test_reward_cli_learns_the_toy_preference(align_dir, tmp_path):
    from lmforge.training.reward_model import load_reward_model

    out = tmp_path / "reward"
    run_cli(
        "reward",
        "--model", str(align_dir / "decoder"),
        "--train", str(align_dir / "prefs.jsonl"),
        "--out", str(out),
        "--max_steps", "20",
        "--eval_every", "10",
        "--lr", "3e-3",
        "--val_fraction", "0.3",
    )  # fmt: skip
    m = manifest(out)
    assert m["stage"] == "align.reward"
    assert m["metrics"]["rm_pairwise_accuracy"] >= 0.9
    rm = load_reward_model(out)
    assert rm.head.pooling == "last" and not rm.training


def test_reward_max_len_cuts_conversations(align_dir, tmp_path, monkeypatch, capsys):
    from lmforge.tokenizer import texts

    shapes = []
    real = texts.pad_batch
    monkeypatch.setattr(
        texts, "pad_batch", lambda seqs, pad: shapes.append(max(map(len, seqs))) or real(seqs, pad)
    )
    args = [
        "--model",
        str(align_dir / "decoder"),
        "--train",
        str(align_dir / "prefs.jsonl"),
        "--max_steps",
        "2",
    ]
    run_cli("reward", *args, "--out", str(tmp_path / "r"), "--max_len", "10")
    assert shapes and max(shapes) <= 10 and manifest(tmp_path / "r")["config"]["max_len"] == 10
    assert main(["align", "reward", *args, "--out", str(tmp_path / "r2"), "--max_len", "49", "-q"]) == 2
    assert "max_len" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_reward_cli_plackett_luce_on_full_rankings(align_dir, tmp_path):
    """Three replies per prompt ranked by how many good words they hold; Plackett–Luce on whole rankings
    must order held-out replies well above chance (1/2)."""
    import random

    GOOD, BAD = "good great fine nice".split(), "bad awful poor ugly".split()  # the fixture's words
    rng = random.Random(1)
    records = []
    for _ in range(40):
        replies = [f"{rng.choice(GOOD)} {rng.choice(GOOD)}", f"{rng.choice(GOOD)} {rng.choice(BAD)}",
                   f"{rng.choice(BAD)} {rng.choice(BAD)}"]  # fmt: skip
        order = rng.sample(range(3), 3)  # stored in a random order; ranking = indices best first
        records.append(
            {"prompt": f"say {rng.choice(GOOD + BAD)}", "responses": [replies[i] for i in order],
             "ranking": sorted(range(3), key=lambda k: order[k])}
        )  # fmt: skip
    data = tmp_path / "rankings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "reward-pl"
    run_cli(
        "reward",
        "--model", str(align_dir / "decoder"),
        "--train", str(data),
        "--loss", "plackett_luce",
        "--out", str(out),
        "--max_steps", "20",
        "--eval_every", "10",
        "--batch_size", "4",
        "--lr", "3e-3",
        "--val_fraction", "0.25",
    )  # fmt: skip
    metrics = manifest(out)["metrics"]
    # held out as whole rankings: training, step-selection and held-out rankings add up to the 40
    assert metrics["train_rankings"] + (metrics["select_pairs"] + metrics["val_pairs"]) // 3 == 40
    assert metrics["rm_pairwise_accuracy"] >= 0.8 > metrics["base_rm_pairwise_accuracy"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "accuracy" in r and "loss" not in r]
    assert [r["step"] for r in steps] == list(range(1, 21)) and all("reward_margin" in r for r in steps)


def test_grpo_cli_on_a_problem_file(align_dir, tmp_path):
    out = tmp_path / "grpo"
    run_cli(
        "grpo",
        "--model", str(align_dir / "decoder"),
        "--problems", str(align_dir / "math.jsonl"),
        "--out", str(out),
        "--max_steps", "3",
        "--eval_every", "3",
        "--batch_size", "2",
        "--group_size", "4",
        "--max_new_tokens", "4",
        "--updates_per_rollout", "2",
        "--val_fraction", "0.25",
    )  # fmt: skip
    m = manifest(out)
    assert m["stage"] == "align.grpo"
    metrics = m["metrics"]
    for key in ("grpo_accuracy_before", "grpo_accuracy_after", "reward_first", "reward_last", "kl_last"):
        assert key in metrics
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 3]  # step 2 reuses step 1's rollout
    assert all("kl" in r for r in rows if "reward" in r)


def test_grpo_cli_on_generated_arithmetic_with_lora(align_dir, tmp_path):
    out = tmp_path / "grpo-lora"
    run_cli(
        "grpo",
        "--model", str(align_dir / "decoder"),
        "--out", str(out),
        "--max_steps", "2",
        "--n_problems", "20",
        "--n_eval", "8",
        "--batch_size", "2",
        "--group_size", "2",
        "--max_new_tokens", "3",
        "--lora_r", "2",
        "--dynamic_sampling", "2",
        "--scale_rewards", "false",
    )  # fmt: skip
    assert manifest(out)["metrics"]["eval_problems"] == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rollouts = [r for r in rows if "reward" in r]
    assert len(rollouts) == 2  # one per step; a second round only when the first lacked signal
    for r in rollouts:
        assert 1 <= r["groups"] <= 2 and 1 <= r["rounds"] <= 2
        assert r["rounds"] == 2 or r["groups"] == 2


def test_ppo_cli_with_a_reward_model(align_dir, reward_dir, tmp_path):
    rm_dir = reward_dir
    out = tmp_path / "ppo"
    run_cli(
        "ppo",
        "--model", str(align_dir / "decoder"),
        "--reward_model", str(rm_dir),
        "--prompts", str(align_dir / "prefs.jsonl"),
        "--out", str(out),
        "--max_steps", "2",
        "--eval_every", "2",
        "--batch_size", "2",
        "--max_new_tokens", "4",
        "--n_eval", "4",
        "--val_fraction", "0.3",
    )  # fmt: skip
    m = manifest(out)
    assert m["stage"] == "align.ppo"
    for key in ("score_before", "score_after", "kl_after", "kl"):
        assert key in m["metrics"]
    assert abs(m["metrics"]["kl_after"]) < 5.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rollouts = [r for r in rows if "reward" in r]
    assert [r["step"] for r in rollouts] == [1] and "rollout_kl" in rollouts[0]  # step 2 reuses the rollout
    evals = [r for r in rows if "win_rate" in r and "final" not in r]
    assert [r["step"] for r in evals] == [0, 2] and evals[0]["win_rate"] == 0.5  # every reply ties at 0
    for key in ("ppo_win_rate", "ppo_kl", "ppo_policy_score", "ppo_base_score", "judged_prompts"):
        assert key in m["metrics"]


def test_generated_problems_hold_out_their_questions():
    from lmforge.stages.align.grpo import Config, load_problems

    train, held = load_problems(Config(out="x", n_problems=200, n_eval=20), None)
    assert len(held) == 20 and len(train) < 200
    assert not {p["question"] for p in held} & {p["question"] for p in train}
    assert len({p["question"] for p in held}) == 20  # distinct: 20 problems, not 20 draws
    train, held = load_problems(Config(out="x", n_problems=200, n_eval=150), None)
    assert 45 < len(held) <= 50  # one-digit addition has 100 questions: at most half are held out
    assert train and not {p["question"] for p in held} & {p["question"] for p in train}


def test_a_problem_file_holds_out_whole_questions(tmp_path):
    """A question drawn many times (a problems file with repeats) is held out with every copy:
    before, the split was by line, and copies of a held-out question were trained on."""
    from lmforge.stages.align.grpo import Config, load_problems

    path = tmp_path / "p.jsonl"
    rows = [{"question": f"{i % 10}+1=", "answer": f"#### {i % 10 + 1}"} for i in range(200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, held = load_problems(Config(out="x", problems=str(path), val_fraction=0.3), path)
    held_q = {p["question"] for p in held}
    assert held_q and len(held) == len(held_q)
    assert not held_q & {p["question"] for p in train} and len(train) == 200 - 20 * len(held_q)


def test_accuracy_change_by_hand():
    from lmforge.stages.align.grpo import accuracy_change

    before = [1.0, 0.0, 0.0, 0.0]
    after = [1.0, 1.0, 1.0, 0.0]
    got = accuracy_change(before, after)
    assert got["grpo_accuracy_before"] == 0.25 and got["grpo_accuracy_after"] == 0.75
    assert got["grpo_accuracy_before_se"] == pytest.approx((0.25 * 0.75 / 4) ** 0.5)
    assert got["grpo_accuracy_after_se"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    # differences 0, 1, 1, 0: mean 0.5, population variance 0.25 → se sqrt(0.25 / 4) = 0.25
    assert got["grpo_accuracy_gain_se"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        accuracy_change([1.0], [])


def test_arithmetic_cli_writes_disjoint_training_and_heldout_files(tmp_path):
    from lmforge.data.supervised import read_conversations
    from lmforge.stages.align.grpo import Config, load_problems

    out = tmp_path / "arithmetic"
    args = [
        "--out",
        str(out),
        "--n_problems",
        "400",
        "--n_heldout",
        "50",
        "--digits",
        "2",
        "--min_digits",
        "1",
    ]
    assert main(["align", "arithmetic", "-q", *args]) == 0
    metrics = manifest(out)["metrics"]
    assert metrics["heldout_problems"] == 50 and metrics["problems"] <= 350
    sft = read_conversations(out / "sft.jsonl")
    assert len(sft) == metrics["problems"]
    rows = {
        name: [json.loads(line) for line in (out / name).read_text().splitlines()]
        for name in ("problems.jsonl", "heldout.jsonl")
    }
    held_q = {r["question"] for r in rows["heldout.jsonl"]}
    assert len(held_q) == 50 and not held_q & {r["question"] for r in rows["problems.jsonl"]}
    sft_q = {line["prompt"] for line in map(json.loads, (out / "sft.jsonl").read_text().splitlines())}
    assert not held_q & sft_q  # SFT never sees a held-out question either
    assert any(len(q.split("+")[0]) == 1 for q in held_q) and any(len(q.split("+")[0]) == 2 for q in held_q)
    train, held = load_problems(
        Config(out="x", problems=str(out / "problems.jsonl"), eval_problems=str(out / "heldout.jsonl")),
        out / "problems.jsonl",
        out / "heldout.jsonl",
    )
    assert len(train) == metrics["problems"] and len(held) == 50
    assert all(p["answer"].startswith("#### ") for p in train + held)
    few = ["--out", str(tmp_path / "x"), "--n_problems", "300", "--n_heldout", "120"]  # 100 questions
    assert main(["align", "arithmetic", "-q", *few]) != 0
