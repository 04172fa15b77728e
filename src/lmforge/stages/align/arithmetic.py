"""Generated arithmetic problems as training files (stage kind ``align.arithmetic``).

``training.align.arithmetic_problems`` draws ``n_problems`` questions like ``7+5=`` (``digits``-digit
operands, operators from ``ops``) and this stage writes them twice: ``sft.jsonl`` (``{"prompt",
"response"}``, the answer alone, for ``finetune sft`` to teach the format) and ``problems.jsonl``
(``{"question", "answer"}`` with ``#### N`` answers, for ``align grpo --problems``). A recipe points at
them as ``"@arithmetic/sft.jsonl"``. ``grpo`` generating its own problems draws its held-out questions
from its own seed: with one-digit operands (100 distinct questions) the SFT file holds them too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, run_stage

STAGE = "align.arithmetic"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge align arithmetic``."""

    out: str = opt("", "output stage directory", path=True)
    n_problems: int = opt(3000, "problems to draw (repeats possible)")
    digits: int = opt(1, "digits per operand")
    ops: str = opt("+", "operators drawn from these characters (+-*)")
    seed: int = opt(12345, "draw seed")

    def validate(self) -> None:
        if self.n_problems < 1 or self.digits < 1:
            raise ConfigError("n_problems", f"n_problems and digits must be >= 1, got {self.n_problems}, {self.digits}")  # fmt: skip
        if not self.ops or set(self.ops) - set("+-*"):
            raise ConfigError("ops", f"operators from '+-*', got {self.ops!r}")


INPUTS: tuple[str, ...] = ()


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Write the problem files (or return the cached result); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/arithmetic)")
    return run_stage(STAGE, cfg, out=cfg.out, inputs={}, work=work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Draw the problems and write ``sft.jsonl`` and ``problems.jsonl``."""
    from lmforge.training.align import arithmetic_problems

    problems = arithmetic_problems(cfg.n_problems, digits=cfg.digits, ops=cfg.ops, seed=cfg.seed)
    with (ctx.dir / "sft.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"prompt": p["question"], "response": p["answer"]}) + "\n" for p in problems)
    with (ctx.dir / "problems.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"question": p["question"], "answer": f"#### {p['answer']}"}) + "\n" for p in problems
        )
    return {"problems": len(problems), "distinct_questions": len({p["question"] for p in problems})}
