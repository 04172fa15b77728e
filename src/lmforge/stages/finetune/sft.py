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
from typing import Any

from lmforge.runstore import StageContext, run_config
from lmforge.training.options import ConversationOptions

STAGE = "finetune.sft"
VERSION = 1


@dataclass
class Config(ConversationOptions):
    """Options of ``lmforge finetune sft``."""


INPUTS = ("model", "train", "val")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Fine-tune (or return the cached result); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """The SFT loop (``sft_loop.run_sft``)."""
    from lmforge.stages.finetune.sft_loop import run_sft  # imports torch: not at --help time

    return run_sft(cfg, ctx)
