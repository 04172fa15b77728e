"""Generated arithmetic problems as training and held-out files (stage kind ``align.arithmetic``).

``training.rewards.arithmetic_problems`` draws ``n_problems`` questions like ``47+8=`` (operands of
``min_digits``..``digits`` digits, operators from ``ops``; with ``reverse`` written least-significant
digit first, ``7 4 + 8 3 =`` → ``5 8``); ``training.rewards.split_heldout`` holds out
the first ``n_heldout`` distinct questions and removes every copy of them from the rest. The stage
writes the training problems twice — ``sft.jsonl`` (``{"prompt", "response"}``, the answer alone, for
``finetune sft``) and ``problems.jsonl`` (``{"question", "answer"}`` with ``#### N`` answers, for
``align grpo problems=``) — and the held-out ones as ``heldout.jsonl`` (same shape, for ``align grpo
eval_problems=``). No held-out question text is in either training file (checked before writing). A
recipe points at them as ``"@arithmetic/sft.jsonl"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, run_stage
from lmforge.training.rewards import arithmetic_problems, split_heldout

STAGE = "align.arithmetic"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge align arithmetic``."""

    out: str = opt("", "output stage directory", path=True)
    n_problems: int = opt(3000, "problems to draw (repeats possible), held-out ones included")
    n_heldout: int = opt(0, "distinct questions held out into heldout.jsonl (0 = none)")
    digits: int = opt(1, "digits per operand (at most)")
    min_digits: int = opt(0, "fewest digits per operand, each operand's length uniform (0 = digits)")
    ops: str = opt("+", "operators drawn from these characters (+-*)")
    reverse: bool = opt(False, "write numbers least-significant digit first, one digit per token")
    seed: int = opt(12345, "draw seed")

    def validate(self) -> None:
        if self.n_problems < 1 or self.digits < 1:
            raise ConfigError("n_problems", f"n_problems and digits must be >= 1, got {self.n_problems}, {self.digits}")  # fmt: skip
        if not 0 <= self.min_digits <= self.digits:
            raise ConfigError("min_digits", f"must be in 0..digits ({self.digits}), got {self.min_digits}")
        if not 0 <= self.n_heldout < self.n_problems:
            raise ConfigError("n_heldout", f"must be in 0..n_problems-1, got {self.n_heldout}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ConfigError("ops", f"operators from '+-*', got {self.ops!r}")


INPUTS: tuple[str, ...] = ()


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Write the problem files (or return the cached result); returns the stage manifest."""
    return run_stage(STAGE, cfg, out=cfg.out, inputs={}, work=work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Draw the problems, hold some out, write ``sft.jsonl``, ``problems.jsonl`` and ``heldout.jsonl``."""
    drawn = arithmetic_problems(
        cfg.n_problems,
        digits=cfg.digits,
        ops=cfg.ops,
        seed=cfg.seed,
        min_digits=cfg.min_digits or None,
        reverse=cfg.reverse,
    )
    try:
        train, held = split_heldout(drawn, cfg.n_heldout)
    except ValueError as exc:
        raise ConfigError("n_heldout", f"{exc}: draw more problems or hold out fewer") from exc
    seen = {p["question"] for p in train}
    if seen & {p["question"] for p in held}:  # split_heldout's promise, checked on what is written
        raise AssertionError("a held-out question is in the training problems")
    with (ctx.dir / "sft.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"prompt": p["question"], "response": p["answer"]}) + "\n" for p in train)
    for name, rows in (("problems.jsonl", train), ("heldout.jsonl", held)):
        with (ctx.dir / name).open("w", encoding="utf-8") as fh:
            fh.writelines(
                json.dumps({"question": p["question"], "answer": f"#### {p['answer'].replace(' ', '')}"})
                + "\n"
                for p in rows
            )
    return {"problems": len(train), "distinct_questions": len(seen), "heldout_problems": len(held)}
