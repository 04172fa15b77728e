"""Split preference data once, by prompt, for a whole alignment run (stage kind ``align.split``).

Every stage of a preference run — pretraining text, SFT, reward model, DPO, PPO, the judged win rates —
must agree on which prompts are held out, or a "held-out" figure scores a prompt some stage trained on.
This stage reads the preference files (``data.preferences``: HH-RLHF text and every other schema),
holds out ``val_fraction`` of the distinct *opening turns* (``data.supervised.holdout_groups`` keyed
by the first message, lower-cased: pairs whose conversations start alike stay on one side, so no
held-out prompt is a continuation of a trained one) and writes:

- ``train.jsonl`` / ``heldout.jsonl``: the pairs, ``{"prompt": [messages], "chosen", "rejected"}``;
- ``sft.jsonl``: ``{"messages": prompt + chosen reply}`` of the training pairs (``finetune sft``);
- ``text.jsonl``: ``{"text"}``, each training pair's chosen conversation as plain dialogue
  (``Human: …`` / ``Assistant: …`` turns), for the ``data`` stage of a policy pretrained on text that
  looks like the dialogues it will answer.

A recipe points at them as ``"@split/train.jsonl"``. Nothing of a held-out prompt reaches the training
files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.data.preferences import Preference, read_preferences
from lmforge.data.supervised import holdout_groups, log_problems, read_files, skipped
from lmforge.runstore import StageContext, run_config

STAGE = "align.split"
VERSION = 1
SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass
class Config:
    """Options of ``lmforge align split``."""

    out: str = opt("", "output stage directory", path=True)
    train: list[str] = opt([], "preference files (.jsonl, optionally compressed)", path=True)
    val_fraction: float = opt(0.15, "fraction of the distinct prompts held out")
    seed: int = opt(0, "split seed")

    def validate(self) -> None:
        if not self.train:
            raise ConfigError("train", "at least one preference file is required (--train pairs.jsonl)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")


INPUTS = ("train",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Write the split files (or return the cached result); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def dialogue(messages: list[dict[str, str]]) -> str:
    """Messages as plain dialogue text, one ``Speaker: content`` turn per paragraph."""
    return "\n\n".join(f"{SPEAKERS.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def _key(p: Preference) -> str:
    return json.dumps(p.prompt, sort_keys=True)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read the pairs, hold out prompts, write the four files."""
    problems: list = []
    prefs: list[Preference] = read_files(
        read_preferences, [p for k, p in sorted(ctx.inputs.items()) if k.startswith("train")], problems
    )
    log_problems(problems, "preference data")
    # grouped by the opening turn: conversations that start alike (HH-RLHF has a few) stay on one side
    keys = [p.prompt[0]["content"].strip().lower() for p in prefs]
    train, held = holdout_groups(list(zip(keys, prefs)), keys, cfg.val_fraction, cfg.seed)
    if not train or not held:
        raise ConfigError("train", f"need pairs on both sides, got {len(train)} and {len(held)}")

    def write(name: str, rows: list[dict[str, Any]]) -> None:
        with (ctx.dir / name).open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    def pair(p: Preference) -> dict[str, Any]:
        return {"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected}

    sft = {_key(p): p for _, p in train}  # one chosen reply per distinct training prompt
    write("train.jsonl", [pair(p) for _, p in train])
    write("heldout.jsonl", [pair(p) for _, p in held])
    write("sft.jsonl", [{"messages": p.conversation("chosen")} for p in sft.values()])
    write("text.jsonl", [{"text": dialogue(p.conversation("chosen"))} for _, p in train])
    return {
        "train_pairs": len(train),
        "heldout_pairs": len(held),
        "train_prompts": len(sft),
        "heldout_prompts": len({_key(p) for _, p in held}),
        "train_openings": len({k for k, _ in train}),
        "heldout_openings": len({k for k, _ in held}),
        "skipped_records": skipped(problems),
    }
