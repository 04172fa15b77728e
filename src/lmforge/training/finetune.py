"""Pieces every fine-tuning method shares: the base model, task heads, the step loop, checkpoints.

- ``load_base``: the model of any lmforge checkpoint (a checkpoint directory or a training stage
  directory, via ``checkpoint.resolve_checkpoint``), optionally rebuilt with a different dropout.
- heads read ``model.heads.hidden_states`` (final hidden states ``[B, T, D]`` of a decoder or an encoder).
- ``sequence_length``: the ``max_len`` a method encodes at (checked against the model's block size).
- ``declared_pooling`` / ``resolve_pooling``: the pooling a checkpoint's ``pooling.json`` declares
  (a sentence-transformers import), which ``pooling: auto`` follows where a method embeds sentences.
- ``TaskClassifier``: one shared trunk and one ``ClassificationHead`` per task; ``forward_routed``
  sends each row of a mixed batch through its own task's head (multi-task learning with hard
  parameter sharing, Caruana 1997).
- ``fit``: the optimisation loop all methods run: schedule (``optim.step_lr``; ``warmup_ratio`` or
  ``warmup_steps``; ``layer_lr_decay`` scales each depth's groups, ``optim.set_lr``) → accumulated
  token/example-weighted backward, clip, L1 and AdamW over the trainable parameters only (one
  ``step.train_step``, as pretraining's; the forward under ``dtype`` autocast, ``precision.training_dtype``)
  → periodic evaluation → early stopping with patience on a monitored metric (``step.EarlyStopping``), keeping
  the best trainable weights in memory (fine-tuned models here are small). ``max_time_s`` stops at a
  wall-clock budget as pretraining does: once a step ends past it, the loop evaluates and stops with
  ``stop_reason`` ``time_budget`` (the other reasons: ``max_steps``, ``early_stop``), and the caller
  saves best and last as at any end. The schedule still spans ``max_steps``.
- ``save_finetuned`` / ``load_heads``: a fine-tuned model is a normal checkpoint directory
  (``model.checkpoint.save_checkpoint``: the trunk, loadable by eval/generate when it is a language
  model) plus, for methods with heads, ``heads.safetensors`` and ``finetune.json`` (task labels and
  pooling); ``ckpt/final.json`` (``model.checkpoint.write_final``) names the best and the last
  checkpoint as pretraining does.

Shape notation: B batch, T tokens, D n_embd, C classes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file
from torch import nn

from lmforge.errors import ConfigError, InputError
from lmforge.log import TENSORBOARD_DIR
from lmforge.model import checkpoint as ckpt
from lmforge.model.checkpoint import HEADS_FILE, META_FILE, POOLING_FILE
from lmforge.model.config import ModelConfig
from lmforge.model.heads import POOLING_CHOICES, ClassificationHead, hidden_states
from lmforge.runstore import TOKENIZER_FILE, resolve_ref
from lmforge.runtime import Runtime
from lmforge.training.optim import build_optimizer, step_lr
from lmforge.training.options import FinetuneOptions
from lmforge.training.precision import training_dtype
from lmforge.training.step import EarlyStopping, train_step

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# base model and hidden states


def base_config(model: str, out: str, which: str = "best") -> tuple[Path, ModelConfig] | None:
    """``(checkpoint dir, config)`` of the base a stage writing to ``out`` will start from, read before the
    stage runs (config only: no weights, nothing written), for its early checks. ``model`` is resolved as
    the run store will (``@name`` beside ``out``); None when there is no complete checkpoint there yet,
    which the run store then reports."""
    try:
        ckpt_dir = ckpt.resolve_checkpoint(resolve_ref(model, Path(out).expanduser().resolve()), which)
        return ckpt_dir, ckpt.load_config(ckpt_dir)
    except InputError:
        return None


def load_base(
    path: Path, which: str = "best", *, device: str = "cpu", dropout: float = -1.0
) -> tuple[nn.Module, ModelConfig, Path]:
    """``(model, config, checkpoint dir)`` of the checkpoint meant by ``path`` (see ``resolve_checkpoint``).

    ``dropout`` >= 0 rebuilds the model with that dropout (the weights are unchanged); -1 keeps it.

    Raises:
        InputError: nothing under ``path`` is a complete checkpoint.
    """
    ckpt_dir = ckpt.resolve_checkpoint(Path(path), which)
    model, mcfg = ckpt.load_model(ckpt_dir)
    if dropout >= 0 and dropout != mcfg.dropout:
        mcfg = dataclasses.replace(mcfg, dropout=dropout)
        state = model.state_dict()
        model = ckpt.build_model(mcfg, state_keys=set(state))
        model.load_state_dict(state)
    logger.info("base model %s (%s, %d layers, d=%d)", ckpt_dir, mcfg.arch, mcfg.n_layer, mcfg.n_embd)
    return model.to(device), mcfg, ckpt_dir


def load_decoder(
    path: Path, which: str = "best", *, method: str, device: str = "cpu", dropout: float = -1.0
) -> tuple[nn.Module, ModelConfig, Path]:
    """``load_base`` for the methods that generate or score text left to right (SFT, DPO, PPO, GRPO).

    Raises:
        ConfigError: the checkpoint is not a decoder (the message names ``method``).
        InputError: nothing under ``path`` is a complete checkpoint.
    """
    model, mcfg, ckpt_dir = load_base(path, which, device=device, dropout=dropout)
    if mcfg.arch != "decoder":
        raise ConfigError("model", f"{method} needs a decoder checkpoint, {ckpt_dir} is an {mcfg.arch}")
    return model, mcfg, ckpt_dir


def sequence_length(max_len: int, mcfg: ModelConfig) -> int:
    """Tokens per example of a method with ``SequenceOptions.max_len``: ``max_len``, or the model's
    ``block_size`` when 0.

    Raises:
        ConfigError: ``max_len`` is longer than the model's ``block_size`` (its position table).
    """
    if max_len > mcfg.block_size:
        raise ConfigError("max_len", f"{max_len} is longer than the model's block_size {mcfg.block_size}")
    return max_len or mcfg.block_size


def default_pooling(arch: str, pooling: str, ckpt_dir: Path | None = None) -> str:
    """``auto`` → the base checkpoint's declared pooling (``pooling.json`` of a sentence-transformers
    import, ``resolve_pooling``) when there is one, else ``last`` for decoders (the only position that
    has read the whole text), ``cls`` for encoders."""
    fallback = "cls" if arch == "encoder" else "last"
    if ckpt_dir is None:
        return fallback if pooling == "auto" else pooling
    return resolve_pooling(pooling, ckpt_dir, fallback)


def declared_pooling(ckpt_dir: Path) -> str | None:
    """The pooling ``mode`` a checkpoint's ``pooling.json`` declares, or None when it has none.

    The sentence-transformers import writes ``{"mode": "mean" | "cls" | "max", "normalize": bool,
    "source": ...}``: how the model's sentence vectors were pooled when it was trained.

    Raises:
        InputError: ``pooling.json`` is unreadable or has no string ``mode``.
    """
    path = Path(ckpt_dir) / POOLING_FILE
    if not path.is_file():
        return None
    try:
        mode = json.loads(path.read_text())["mode"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"cannot read the pooling mode of {path}: {e!r}") from e
    if not isinstance(mode, str):
        raise InputError(f"{path}: mode must be a string, got {mode!r}")
    return mode


def resolve_pooling(pooling: str, ckpt_dir: Path, fallback: str) -> str:
    """``pooling``, or for ``auto`` the checkpoint's declared pooling (``declared_pooling``) when lmforge
    pools that way (``model.heads.POOLING_CHOICES``), else ``fallback``."""
    if pooling != "auto":
        return pooling
    declared = declared_pooling(ckpt_dir)
    if declared in POOLING_CHOICES:
        logger.info("pooling auto: %s, as %s declares", declared, Path(ckpt_dir) / POOLING_FILE)
        return declared
    if declared is not None:
        logger.warning(
            "pooling auto: %s declares %r, which lmforge does not pool; using %s",
            Path(ckpt_dir) / POOLING_FILE,
            declared,
            fallback,
        )
    return fallback


class TaskClassifier(nn.Module):
    """A shared trunk with one classification head per task.

    Args:
        trunk: a checkpoint model (``Decoder`` or ``EncoderForPretraining``).
        n_classes: task name → number of classes.
        pooling: ``cls`` | ``mean`` | ``last`` (see ``model.heads.pool``).
    """

    def __init__(self, trunk: nn.Module, n_classes: dict[str, int], pooling: str):
        super().__init__()
        if not n_classes:
            raise ValueError("TaskClassifier needs at least one task")
        self.trunk = trunk
        self.heads = nn.ModuleDict(
            {t: ClassificationHead(trunk.config, c, pooling) for t, c in n_classes.items()}
        )

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor, task: str) -> torch.Tensor:
        """Logits ``[B, C_task]`` of every row under ``task``'s head."""
        return self.heads[task](hidden_states(self.trunk, idx, attention_mask), attention_mask)

    def forward_routed(
        self, idx: torch.Tensor, attention_mask: torch.Tensor, tasks: Sequence[str]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One trunk pass for a mixed batch; ``{task: (row indices [n], logits [n, C_task])}``.

        Row ``i`` goes through the head of ``tasks[i]`` only.
        """
        if len(tasks) != idx.shape[0]:
            raise ValueError(f"{len(tasks)} task names for a batch of {idx.shape[0]} rows")
        hidden = hidden_states(self.trunk, idx, attention_mask)  # [B, T, D]
        out = {}
        for task in dict.fromkeys(tasks):
            rows = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=idx.device)
            out[task] = (rows, self.heads[task](hidden[rows], attention_mask[rows]))
        return out


# --------------------------------------------------------------------------------------------------
# the loop


@dataclass
class FitResult:
    """What ``fit`` returns: where it stopped, the best evaluation and its trainable weights."""

    steps: int
    best_step: int
    best_metrics: dict[str, float]
    last_metrics: dict[str, float]
    initial_metrics: dict[str, float]
    best_state: dict[str, torch.Tensor] = field(repr=False)
    stop_reason: str
    train_loss: float
    train_time_s: float
    dtype: str = "fp32"

    def run_metrics(self) -> dict[str, float]:
        """What a fine-tuning stage reports about its run: ``steps``, ``best_step``, ``train_loss`` (the
        loss's moving average at the end), ``train_time_s`` and ``early_stopped`` (1 when patience ended
        it)."""
        return {
            "steps": self.steps,
            "best_step": self.best_step,
            "train_loss": self.train_loss,
            "train_time_s": self.train_time_s,
            "early_stopped": int(self.stop_reason == "early_stop"),
        }


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every trainable parameter, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from ``trainable_state``) back into ``model``'s parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def fit(
    model: nn.Module,
    opts: FinetuneOptions,
    next_batch: Callable[[], tuple[Any, int]],
    loss_sum: Callable[[Any], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
    *,
    monitor: str,
    mode: str | None = None,
    log_metrics: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train the parameters of ``model`` that require grad; the loop is in the module docstring.

    Args:
        model: the model being fine-tuned (frozen parameters have ``requires_grad=False``).
        opts: the shared options (steps, accumulation, lr and schedule, weight decay, L1, clipping,
            evaluation interval, patience, the training forward's ``dtype``).
        next_batch: returns ``(batch, n)``, ``n`` the number of loss terms (tokens or examples) in it.
        loss_sum: the summed loss of a batch (a scalar tensor); ``fit`` divides by the step's total ``n``.
        evaluate: validation metrics (called before training, every ``eval_every`` steps and at the end,
            also when the time budget ends training; the budget counts from the first step, so the
            initial evaluation is not charged to it but the periodic ones are).
        monitor: the metric of ``evaluate`` that early stopping and best-checkpoint selection follow.
        mode: ``min`` or ``max``; by default ``min`` for a loss (a ``monitor`` ending in ``loss``) and
            ``max`` for any other metric (an accuracy, F1, MRR, a reward model's score or win rate).
        log_metrics: receives one record per step and per evaluation (``metrics.jsonl``).

    Raises:
        FloatingPointError: the loss becomes NaN or infinite.
        KeyError: ``evaluate`` does not return ``monitor``.
    """
    from lmforge.log import step_line

    log_metrics = log_metrics or (lambda record: None)
    optimizer = build_optimizer(model, opts.lr, opts.weight_decay, layer_lr_decay=opts.layer_lr_decay)
    stopper = EarlyStopping(
        mode or ("min" if monitor.endswith("loss") else "max"), opts.patience, opts.min_delta
    )
    device = next(model.parameters()).device.type
    rt = Runtime(device=device, dtype=training_dtype(opts.dtype, model, device), seed=opts.seed)
    if rt.dtype != "fp32":
        logger.info("fine-tuning with %s autocast (dtype %s)", rt.dtype, opts.dtype)
    initial = evaluate()
    log_metrics({"step": 0, **initial})
    logger.info("step 0 (before fine-tuning): %s", _fmt(initial))
    best_state, best_step, best_metrics, last = trainable_state(model), 0, initial, initial
    loss_ema, stop_reason, step = math.nan, "max_steps", 0
    start = time.perf_counter()
    while step < opts.max_steps:
        lr = step_lr(opts, step)
        model.train()
        micro = [next_batch() for _ in range(opts.grad_accum)]
        stats = train_step(
            model,
            [optimizer],
            micro,
            loss_sum,
            lr=lr,  # each group: lr × its layer-wise lr_scale
            grad_clip=opts.grad_clip,
            l1=opts.l1,
            step=step,
            autocast=rt.autocast,
        )
        step += 1
        loss_value, grad_norm = stats.loss, stats.grad_norm
        loss_ema = loss_value if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss_value
        elapsed = time.perf_counter() - start
        log_metrics(
            {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm, "elapsed_s": elapsed}
        )
        if step % opts.log_every == 0 or step == 1:
            logger.info(
                step_line(
                    step,
                    opts.max_steps,
                    {"ema_loss": loss_ema, "lr": lr, "gnorm": grad_norm},
                    elapsed,
                    opts.max_time_s,
                )
            )
        out_of_time = opts.max_time_s > 0 and elapsed >= opts.max_time_s
        if step % opts.eval_every == 0 or step == opts.max_steps or out_of_time:
            last = evaluate()
            log_metrics({"step": step, **last})
            logger.info("step %d: %s", step, _fmt(last))
            if stopper.update(float(last[monitor])):
                best_state, best_step, best_metrics = trainable_state(model), step, last
            if stopper.stop:
                stop_reason = "early_stop"
                logger.info("early stop: no %s improvement in %d evaluations", monitor, stopper.bad)
        if out_of_time:  # as pretraining: the budget is the reason even when patience ran out too
            stop_reason = "time_budget"
            logger.info("time budget of %gs reached at step %d (%.1fs)", opts.max_time_s, step, elapsed)
        if stop_reason != "max_steps":
            break
    if best_step == 0 and step > 0:  # never keep the untrained model as "best" of a fine-tune
        best_state, best_step, best_metrics = trainable_state(model), step, last
    return FitResult(
        steps=step,
        best_step=best_step,
        best_metrics=best_metrics,
        last_metrics=last,
        initial_metrics=initial,
        best_state=best_state,
        stop_reason=stop_reason,
        train_loss=loss_ema,
        train_time_s=time.perf_counter() - start,
        dtype=rt.dtype,
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " | ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))


# --------------------------------------------------------------------------------------------------
# checkpoints


def save_policy(
    dir: Path,
    model: nn.Module,
    mcfg: ModelConfig,
    *,
    tokenizer_path: Path | None,
    meta: dict[str, Any],
    lora: Any = None,
    base: Path | str = "",
    merge: bool = True,
) -> None:
    """Save a fine-tuned language model: a normal checkpoint (``save_finetuned``; LoRA adapters merged
    into the weights) and, when ``lora`` (its ``LoraConfig``) is given, the adapter in the PEFT layout
    under ``dir/adapter`` with ``base`` as its base model. ``merge=False`` writes the adapter alone."""
    if lora is None:
        save_finetuned(dir, model, mcfg, tokenizer_path=tokenizer_path, meta=meta)
        return
    from lmforge.model.lora import merged_state_dict, save_adapter

    if merge:
        save_finetuned(
            dir, model, mcfg, tokenizer_path=tokenizer_path, meta=meta, state_dict=merged_state_dict(model)
        )
    save_adapter(model, dir / "adapter", lora, base_model_name_or_path=str(base))


def save_finetuned(
    dir: Path,
    trunk: nn.Module,
    mcfg: ModelConfig,
    *,
    tokenizer_path: Path | None,
    heads: nn.ModuleDict | None = None,
    meta: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a normal checkpoint of ``trunk`` to ``dir``, plus ``heads.safetensors`` and ``finetune.json``.

    ``state_dict`` replaces the trunk's own (e.g. LoRA weights merged in). All files are written
    atomically by ``save_checkpoint`` and recorded in its completion marker, so a damaged head file is
    caught by the same verification as the weights.
    """
    ckpt.save_checkpoint(
        dir,
        trunk,
        mcfg,
        tokenizer_path=tokenizer_path,
        state_dict=state_dict,
        extra_tensors=None if heads is None else {HEADS_FILE: heads.state_dict()},
        extra_files=None if meta is None else {META_FILE: {"format": 1, **meta}},
    )
    return Path(dir)


def load_heads(dir: Path, mcfg: ModelConfig) -> tuple[nn.ModuleDict, dict[str, Any]]:
    """The task heads and ``finetune.json`` of a classifier checkpoint written by ``save_finetuned``.

    Raises:
        InputError: the checkpoint has no heads.
    """
    meta_path, heads_path = Path(dir) / META_FILE, Path(dir) / HEADS_FILE
    if not (meta_path.is_file() and heads_path.is_file()):
        raise InputError(f"{dir} holds no classification heads ({META_FILE} + {HEADS_FILE})")
    meta = json.loads(meta_path.read_text())
    heads = nn.ModuleDict(
        {t: ClassificationHead(mcfg, len(labels), meta["pooling"]) for t, labels in meta["labels"].items()}
    )
    heads.load_state_dict(load_file(str(heads_path)))
    return heads, meta


def save_best_and_last(
    ckpt_root: Path,
    model: nn.Module,
    result: FitResult,
    save: Callable[[Path], None],
) -> Path:
    """Save the last weights as ``step_<steps>`` and the best as ``step_<best_step>``; write final.json.

    ``save(dir)`` writes the checkpoint of the model as it is now. On return the model holds the best
    weights. Returns the best checkpoint's directory.
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    last = f"step_{result.steps}"
    save(ckpt_root / last)
    best = f"step_{result.best_step}"
    restore(model, result.best_state)
    if best != last:
        save(ckpt_root / best)
    ckpt.write_final(
        ckpt_root,
        last=last,
        best=best,
        step=result.steps,
        best_step=result.best_step,
        stop_reason=result.stop_reason,
    )
    return ckpt_root / best


def save_with_heads(
    ckpt_root: Path,
    model: nn.Module,
    result: FitResult,
    mcfg: ModelConfig,
    *,
    tokenizer_path: Path,
    meta: dict,
) -> Path:
    """``save_best_and_last`` of a model with a ``trunk`` and ``heads`` (classify, multitask, ner, qa):
    each checkpoint is the trunk plus ``heads.safetensors`` and ``meta`` (``save_finetuned``)."""
    return save_best_and_last(
        ckpt_root,
        model,
        result,
        lambda d: save_finetuned(
            d, model.trunk, mcfg, tokenizer_path=tokenizer_path, heads=model.heads, meta=meta
        ),
    )


# --------------------------------------------------------------------------------------------------
# classification helpers


@torch.no_grad()
def predict_classes(
    model: TaskClassifier,
    seqs: Sequence[Sequence[int]],
    labels: Sequence[int],
    task: str,
    *,
    pad_id: int,
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[list[int], float]:
    """``(predicted class per sequence, mean cross-entropy)`` of ``task``'s head, in eval mode.

    Sequences are scored in batches of similar length (less padding); the output keeps input order.
    """
    from lmforge.tokenizer.texts import pad_batch

    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    predicted = [0] * len(seqs)
    total = 0.0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        idx, mask = pad_batch([seqs[i] for i in rows], pad_id)
        logits = model(idx.to(device), mask.to(device), task)  # [b, C]
        target = torch.tensor([labels[i] for i in rows], device=device)
        total += float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
        for i, p in zip(rows, logits.argmax(dim=-1).tolist()):
            predicted[i] = p
    model.train(was_training)
    return predicted, total / max(len(seqs), 1)


class Begun(NamedTuple):
    """What a fine-tuning or alignment stage starts from (``begin``)."""

    rt: Runtime
    model: nn.Module
    mcfg: ModelConfig
    ckpt_dir: Path
    tok_path: Path
    tok: Any


def begin(cfg: Any, ctx: Any, method: str = "") -> Begun:
    """The preamble of every fine-tuning and alignment stage: the runtime (``cfg.device``, ``seed``,
    ``threads``; fp32 weights, ``fit`` autocasts), a fresh work directory (``restart``), the base
    checkpoint of the stage's ``model`` input (``load_decoder`` naming ``method`` when it is set, else
    ``load_base``, with ``cfg.dropout``) and its tokenizer."""
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.train import load_tokenizer

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    restart(ctx)
    where, which = ctx.inputs["model"], cfg.checkpoint
    if method:
        model, mcfg, ckpt_dir = load_decoder(
            where, which, method=method, device=rt.device, dropout=cfg.dropout
        )
    else:
        model, mcfg, ckpt_dir = load_base(where, which, device=rt.device, dropout=cfg.dropout)
    tok_path = ckpt_dir / TOKENIZER_FILE
    return Begun(rt, model, mcfg, ckpt_dir, tok_path, load_tokenizer(tok_path))


def restart(ctx: Any) -> None:
    """Clear what an interrupted attempt left in the stage's work directory (``metrics.jsonl``, ``ckpt/``,
    the TensorBoard events).

    Fine-tunes are short, so an interrupted one starts again from its base checkpoint rather than
    resuming mid-run; without this its step records would be appended twice.
    """
    if getattr(ctx, "resumed", False):
        logger.info("%s: an interrupted attempt is discarded; fine-tuning starts again", ctx.instance)
        (ctx.dir / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(ctx.dir / "ckpt", ignore_errors=True)
        shutil.rmtree(ctx.dir / TENSORBOARD_DIR, ignore_errors=True)
