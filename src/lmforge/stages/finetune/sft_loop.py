"""SFT's loop, shared by the stages ``finetune.sft``, ``finetune.lora`` and ``finetune.task`` (not a stage).

The loop is ``finetune.fit``; this module supplies the data and the loss. Conversations are rendered
by ``render_chat``, so the loss covers assistant tokens (and the ``<|end|>`` closing each assistant
turn) only, packed or padded into rows (``training.batches``); the loss of a step is the token-weighted
mean over every supervised token of the accumulated batch (``training.step``). Validation loss and
perplexity are measured on held-out conversations, before training (the base model) and after.
``finetune.task`` passes its own examples (task documents) instead of conversations.

With LoRA (Hu et al. 2021, ``lmforge.model.lora``) only the adapters train. Each checkpoint
directory then holds ``adapter/`` in the PEFT layout and, with ``merge`` on, the merged weights as a
normal checkpoint, which eval, generate and chat load like any other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import ConfigError
from lmforge.runstore import StageContext
from lmforge.training import finetune as ft
from lmforge.training.batches import chat_rows, encode_conversations, lm_batch
from lmforge.training.step import token_loss

logger = logging.getLogger(__name__)


def conversation_examples(cfg: Any, ctx: StageContext, tok: Any, block_size: int) -> tuple[list, list, dict]:
    """``(train examples, held-out examples, counts)`` from the conversation files of ``ctx.inputs``
    (``train0..``, optionally ``val``; else ``val_fraction`` of train is held out)."""
    from lmforge.data.supervised import log_problems, read_conversations, skipped, train_and_held

    train_convs, val_convs, problems = train_and_held(
        read_conversations, ctx.inputs, cfg.val_fraction, cfg.seed
    )
    log_problems(problems, "SFT data")
    if cfg.max_train_examples:
        train_convs = train_convs[: cfg.max_train_examples]
    train_ex, dropped = encode_conversations(tok, train_convs, block_size)
    val_ex, val_dropped = encode_conversations(tok, val_convs[: cfg.max_eval_examples or None], block_size)
    if dropped or val_dropped:
        logger.warning(
            "%d conversations dropped (invalid, or nothing supervised within block_size)",
            dropped + val_dropped,
        )
    if not train_ex or not val_ex:
        raise ConfigError(
            "train", f"no usable conversations: {len(train_ex)} for training, {len(val_ex)} held out"
        )
    counts = {
        "train_conversations": len(train_ex),
        "skipped_records": skipped(problems),
        "val_conversations": len(val_ex),
    }
    return train_ex, val_ex, counts


def run_sft(
    cfg: Any,
    ctx: StageContext,
    *,
    lora: Any = None,
    examples: Callable[[Any, StageContext, Any, int], tuple[list, list, dict]] = conversation_examples,
    method: str = "",
) -> dict[str, float]:
    """Fine-tune ``cfg.model`` on ``cfg.train`` (LoRA when ``lora`` is a ``LoraConfig``); returns metrics.

    ``cfg`` is the stage config: ``FinetuneOptions`` plus ``packing`` and ``max_train_examples``, and
    ``merge`` for LoRA. Inputs in ``ctx.inputs``: ``model``, ``train0..``, optionally ``val``.
    ``examples(cfg, ctx, tokenizer, block_size)`` supplies the ``(ids, loss mask)`` examples (default:
    rendered conversations; ``finetune.task`` passes task documents); ``method`` names the checkpoint's
    fine-tuning method (default ``sft`` or ``lora``).
    """
    from lmforge.tokenizer.train import special_id

    rt, model, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx, "SFT")
    pad_id = special_id(tok, "pad")
    train_ex, val_ex, counts = examples(cfg, ctx, tok, mcfg.block_size)
    rows = chat_rows(train_ex, mcfg.block_size, cfg.packing)
    val_rows = chat_rows(val_ex, mcfg.block_size, "pad")
    logger.info(
        "%d training examples in %d rows (%s), %d held out",
        len(train_ex),
        len(rows),
        cfg.packing,
        len(val_ex),
    )
    adapted: list[str] = []
    if lora is not None:
        from lmforge.model.lora import apply_lora

        adapted = apply_lora(model, lora)
        logger.info("LoRA r=%d alpha=%g on %d layers", lora.r, lora.alpha, len(adapted))
    rng = np.random.default_rng(cfg.seed)
    device = rt.device

    def next_batch() -> tuple[Any, int]:
        x, y, m = lm_batch([rows[i] for i in rng.integers(0, len(rows), size=cfg.batch_size)], pad_id)
        return (x.to(device), y.to(device), m.to(device)), int(m.sum())

    def loss_sum(batch: Any) -> torch.Tensor:
        x, y, m = batch
        return token_loss(model(x), y, m)[0]

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        was = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(val_rows), 2 * cfg.batch_size):
            x, y, m = lm_batch(val_rows[start : start + 2 * cfg.batch_size], pad_id)
            s, n = token_loss(model(x.to(device)), y.to(device), m.to(device))
            total, count = total + float(s), count + n
        model.train(was)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    result = ft.fit(
        model, cfg, next_batch, loss_sum, evaluate, monitor="val_loss", log_metrics=ctx.log_metrics
    )

    def save(d: Path) -> None:
        meta = {"method": method or ("sft" if lora is None else "lora"), "base": str(ckpt_dir)}
        if lora is not None:
            meta["merged"] = True
        ft.save_policy(
            d,
            model,
            mcfg,
            tokenizer_path=tok_path,
            meta=meta,
            lora=lora,
            base=ckpt_dir,
            merge=lora is None or cfg.merge,  # only the lora stage has `merge`
        )

    ft.save_best_and_last(ctx.dir / "ckpt", model, result, save)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        **result.best_metrics,
        "base_val_loss": result.initial_metrics["val_loss"],
        "base_val_ppl": result.initial_metrics["val_ppl"],
        **result.run_metrics(),
        **counts,
        "trainable_params": trainable,
        **({"adapted_layers": len(adapted)} if lora is not None else {}),
    }
