"""The training options pretraining and fine-tuning share, spelled once (no torch import: ``--help`` stays fast).

``TrainOptions`` holds every option whose meaning is the same in every training loop: the step budget
(``max_steps``, ``max_time_s``), the batch (``batch_size``, ``grad_accum``), the optimiser step
(``lr``, the schedule, ``weight_decay`` = L2, ``l1``, ``grad_clip``), evaluation and early stopping
(``eval_every``, ``patience``, ``min_delta``), and where and how it runs (``seed``, ``device``, ``dtype``,
``threads``, ``log_every``); all of them reach ``training.step.train_step`` / ``EarlyStopping``.
``lmforge pretrain``'s config and ``FinetuneOptions`` subclass it; a loop whose sensible default differs
re-declares the field with ``config.retuned`` (same help, another default). Each ``lmforge finetune <method>``
config subclasses ``FinetuneOptions`` (base checkpoint, dropout, layer-wise lr decay, held-out split) and
adds its own data and method fields; every method, alignment's too, trains through
``training.finetune.fit``. ``SequenceOptions`` adds ``max_len`` for the methods that read one sequence per
example; ``ConversationOptions`` the conversation files and packing of SFT (``finetune sft`` and ``lora``).
``device_option`` is the device option of every config that runs a model, training or not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from lmforge.config import ConfigError, above, at_least, opt, retuned
from lmforge.runtime import DTYPES


def device_option(*, cache: bool = True) -> Any:
    """The ``device`` option of every config that runs a model (training, decoding, evaluation, serving):
    ``auto`` picks CUDA, then MPS, then the CPU (``runtime.create_runtime``). ``cache=False`` where the
    device is left out of the cache key (a scaling point's result does not depend on it)."""
    return opt("auto", "auto | cpu | cuda | cuda:N | mps", cache=cache)


@dataclass
class TrainOptions:
    """Options every training loop shares (pretraining and fine-tuning)."""

    max_steps: int = opt(200, "optimiser steps")
    max_time_s: float = opt(0.0, "stop training after this many seconds, evaluate and save (0 = no budget)")
    batch_size: int = opt(16, "sequences (or examples) per micro-batch, per rank")
    grad_accum: int = opt(1, "micro-batches per optimiser step (loss weighted by token/example count)")
    lr: float = opt(1e-3, "peak learning rate")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of lr")
    warmup_steps: int = opt(10, "linear warmup steps (at most max_steps)")
    warmup_ratio: float = opt(0.0, "warmup as a fraction of max_steps, e.g. 0.1 (0 = use warmup_steps)")
    schedule: Literal["cosine", "linear", "constant", "wsd"] = opt(
        "cosine", "learning-rate schedule after warmup"
    )
    weight_decay: float = opt(0.01, "decoupled weight decay (L2) on trainable matrices")
    l1: float = opt(0.0, "L1 penalty: adds l1 · Σ|w| over trainable matrices to the loss (0 = off)")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    eval_every: int = opt(50, "evaluate on the validation split every N steps (and at the end)")
    patience: int = opt(0, "stop after this many evaluations without improvement (0 = off)")
    min_delta: float = opt(0.0, "the monitored metric must improve by more than this to count")
    seed: int = opt(1337, "seed of initialisation, data order, held-out split and dropout")
    device: str = device_option()
    dtype: str = opt(
        "auto",
        "auto | fp32 | bf16 | fp16 (autocast for the training forward; auto: on a CPU the faster of fp32 and"
        " bf16 for this decoder, measured and cached; bf16 on recent GPUs)",
    )
    threads: int = opt(0, "CPU threads for torch (0 = one per core)", cache=False)
    log_every: int = opt(10, "log one line every N steps", cache=False)

    RENAMED: ClassVar[dict[str, str]] = {}  # deprecated option name → its name now (config.from_dict)

    def validate(self) -> None:
        at_least(self, 1, "max_steps", "batch_size", "grad_accum", "eval_every", "log_every")
        at_least(self, 0, "warmup_steps")
        if (
            self.warmup_steps > self.max_steps > 0 and not self.warmup_ratio
        ):  # e.g. --max_steps 20 on a recipe
            logging.getLogger(__name__).warning(  # that warms up for 50
                "warmup_steps %d > max_steps %d: warming up over all %d steps instead",
                self.warmup_steps,
                self.max_steps,
                self.max_steps,
            )
            self.warmup_steps = self.max_steps
        above(self, 0, "lr")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError("warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        at_least(self, 0, "weight_decay", "l1", "grad_clip", "patience", "min_delta", "threads", "max_time_s")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def warmup(self) -> int:
        """Warmup steps of the schedule: ``warmup_ratio`` of ``max_steps`` (rounded, at least 1) when
        set, else ``warmup_steps``; never more than ``max_steps``."""
        if self.warmup_ratio > 0:
            return min(self.max_steps, max(1, round(self.warmup_ratio * self.max_steps)))
        return min(self.warmup_steps, self.max_steps)


@dataclass
class FinetuneOptions(TrainOptions):
    """Options shared by every fine-tuning method."""

    model: str = opt(
        "@pretrain", "base model: a checkpoint directory or a training stage directory", path=True
    )
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to start from")
    out: str = opt("", "output stage directory (checkpoints under ckpt/)", path=True)
    dtype: str = retuned(TrainOptions, "dtype", "fp32")
    layer_lr_decay: float = opt(
        1.0, "layer-wise lr decay: block i of L takes lr·decay^(L−i), embeddings lr·decay^(L+1) (1 = off)"
    )
    dropout: float = opt(-1.0, "dropout while fine-tuning (-1 = keep the base model's)")
    val_fraction: float = opt(0.1, "fraction of the training data held out when no validation file is given")
    max_eval_examples: int = opt(0, "score at most this many held-out examples per evaluation (0 = all)")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError("layer_lr_decay", f"must be in (0, 1] (1 = off), got {self.layer_lr_decay}")
        at_least(self, 0, "max_eval_examples")
        if not (self.dropout == -1.0 or 0.0 <= self.dropout < 1.0):
            raise ConfigError(
                "dropout", f"must be in [0, 1) or -1 (keep the base model's), got {self.dropout}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")


@dataclass
class SequenceOptions(FinetuneOptions):
    """``FinetuneOptions`` plus ``max_len``, for the methods that read each example as one sequence
    (classify, multitask, ner, contrastive, align reward): a BERT-size model (block_size 512)
    fine-tunes much faster at 128 tokens, and batches are padded to their longest row, not to this."""

    max_len: int = opt(
        0,
        "longest example in tokens, frame tokens included (0 = the model's block_size); longer ones are cut",
    )

    def validate(self) -> None:
        super().validate()
        if self.max_len != 0 and self.max_len < 3:
            raise ConfigError("max_len", f"must be 0 (the model's block_size) or >= 3, got {self.max_len}")


@dataclass
class ConversationOptions(FinetuneOptions):
    """``FinetuneOptions`` plus the conversation files and their packing: the data options of SFT, with
    or without LoRA adapters (``finetune sft``, ``finetune lora``)."""

    train: list[str] = opt([], "conversation files (.jsonl, optionally compressed)", path=True)
    val: str = opt("", "held-out conversations ('' = hold out val_fraction of train)", path=True)
    packing: Literal["pack", "pad"] = opt("pack", "pack whole conversations into rows, or one per row")
    max_train_examples: int = opt(0, "use at most this many training conversations (0 = all)")

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "at least one conversation file is required (--train data.jsonl)")
        at_least(self, 0, "max_train_examples")
