"""``align split``: held-out prompts are chosen once, by opening turn, and nothing of them reaches the
training pair, SFT or pretraining-text files."""

from __future__ import annotations

import json

from lmforge.cli import main


def test_split_holds_out_openings_and_writes_the_training_side_only(tmp_path):
    records = []
    for i in range(60):
        opening = f"question {i % 40}"  # 20 openings start two conversations each
        records.append({"chosen": f"\n\nHuman: {opening}\n\nAssistant: ok {i}\n\nHuman: more {i}\n\nAssistant: yes {i}",
                        "rejected": f"\n\nHuman: {opening}\n\nAssistant: ok {i}\n\nHuman: more {i}\n\nAssistant: no {i}"})  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "split"
    assert (
        main(["align", "split", "--train", str(data), "--val_fraction", "0.3", "--out", str(out), "-q"]) == 0
    )

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (out / name).read_text().splitlines()]

    train, held, sft, text = read("train.jsonl"), read("heldout.jsonl"), read("sft.jsonl"), read("text.jsonl")
    assert len(train) + len(held) == 60 and held and train
    openings = {
        side: {r["prompt"][0]["content"] for r in rows} for side, rows in (("train", train), ("held", held))
    }
    assert not openings["train"] & openings["held"]  # a shared opening never straddles the split
    held_turns = (
        {r["chosen"] for r in held}
        | {r["rejected"] for r in held}
        | {r["prompt"][-1]["content"] for r in held}
    )
    trained = {m["content"] for r in sft for m in r["messages"]} | {r["chosen"] for r in train}
    trained |= {turn.split(": ", 1)[1] for r in text for turn in r["text"].split("\n\n")}
    assert len(held_turns) == 3 * len(held) and not held_turns & trained
    assert len(sft) == len(train) and sft[0]["messages"][-1] == {
        "role": "assistant",
        "content": train[0]["chosen"],
    }
    assert text[0]["text"].startswith(f"Human: {train[0]['prompt'][0]['content']}\n\nAssistant: ok")
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["train_openings"] + metrics["heldout_openings"] == 40
