"""align.label: on-policy pairs from the policy's own replies, the reward model's best over its worst;
held-out prompts are never labelled; DPO reads the pairs."""

from __future__ import annotations

import json

from lmforge.cli import main
from lmforge.data.preferences import read_preferences
from lmforge.stages.align.label import best_and_worst


def test_best_and_worst_by_hand():
    assert best_and_worst([0.1, 0.7, -0.2, 0.3]) == (1, 2)
    assert best_and_worst([0.5, 0.5, 0.5]) == (0, 0)  # all tie: the same reply, so no pair
    assert best_and_worst([-1.0, 2.0, 2.0, -1.0]) == (1, 0)  # the first of equal scores


def test_label_writes_best_over_worst_and_never_a_held_out_prompt(align_dir, reward_dir, tmp_path):
    import torch

    from lmforge.training.judge import load_scorer

    rows = [json.loads(x) for x in (align_dir / "prefs.jsonl").read_text().splitlines()[:-1]]
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    held_prompts = {r["prompt"] for r in rows[:20]}
    out = tmp_path / "label"
    args = [
        "align", "label", "--model", str(align_dir / "decoder"), "--reward_model", str(reward_dir),
        "--prompts", str(align_dir / "prefs.jsonl"), "--exclude", str(tmp_path / "held.jsonl"),
        "--n_samples", "3", "--max_new_tokens", "6", "-q", "--device", "cpu", "--threads", "1",
    ]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    all_prompts = {r["prompt"] for r in rows}
    assert m["prompts"] == len(all_prompts - held_prompts) and m["excluded_prompts"] == len(held_prompts)
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == m["pairs"] == m["prompts"] - m["no_pair_prompts"] > 0
    assert not {p["prompt"][-1]["content"] for p in pairs} & held_prompts
    # the recorded scores are the judge's, and the chosen reply scores strictly higher
    judge = load_scorer(reward_dir)
    rescored = judge(
        [p["prompt"] for p in pairs] * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    )
    assert torch.allclose(rescored[: len(pairs)], torch.tensor([p["chosen_score"] for p in pairs]), atol=1e-4)
    assert torch.allclose(
        rescored[len(pairs) :], torch.tensor([p["rejected_score"] for p in pairs]), atol=1e-4
    )
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert abs(m["chosen_score"] - sum(p["chosen_score"] for p in pairs) / len(pairs)) < 1e-6
    assert len(read_preferences(out / "pairs.jsonl")) == len(pairs)  # the format DPO reads
    assert main([*args, "--min_margin", "1e9", "--out", str(tmp_path / "none")]) == 2  # no pair: an error
