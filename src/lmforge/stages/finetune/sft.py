"""Supervised fine-tuning on chat or instruction data (stage kind ``finetune.sft``).

Data: JSONL files with ``messages``, ``prompt``/``response``, Alpaca ``instruction``/``input``/
``output``, Self-Instruct ``instruction``/``instances`` or ``question``/``answer`` records
(``data.supervised``). Each conversation goes through the shared chat template, so only assistant
tokens carry a loss; rows are packed (default) or padded; the loss is token-weighted across
accumulation. Validation loss and perplexity on held-out conversations are reported before and after;
the best checkpoint by validation loss is a normal checkpoint that eval, generate and chat load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, config_inputs, run_stage
from lmforge.training.options import FinetuneOptions

STAGE = "finetune.sft"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge finetune sft``."""

    train: list[str] = opt([], "conversation files (.jsonl, optionally compressed)", path=True)
    val: str = opt("", "held-out conversations ('' = hold out val_fraction of train)", path=True)
    packing: Literal["pack", "pad"] = opt("pack", "pack whole conversations into rows, or one per row")
    max_train_examples: int = opt(0, "use at most this many training conversations (0 = all)")

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "at least one conversation file is required (--train data.jsonl)")
        if self.max_train_examples < 0:
            raise ConfigError("max_train_examples", f"must be >= 0, got {self.max_train_examples}")


INPUTS = ("model", "train", "val")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Fine-tune (or return the cached result); returns the stage manifest."""
    return run_stage(
        STAGE,
        cfg,
        out=cfg.out,
        inputs=config_inputs(cfg, *INPUTS),
        work=work,
        version=VERSION,
        force=force,
    )


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """The SFT loop (``training.sft.run_sft``)."""
    from lmforge.training.sft import run_sft

    return run_sft(cfg, ctx)
