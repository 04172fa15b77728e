"""Pretrain a decoder-only transformer on token shards with next-token prediction.

The loop is written out below: schedule → one ``training.step.train_step`` (accumulated token-weighted
forward/backward over ranks, clip, L1, AdamW/Muon step, the non-finite check; the step every training loop
takes) → log line and metrics.jsonl → periodic validation (loss, perplexity, bits per byte) →
atomic checkpoints. Checkpoints live in the stage's work directory, so an interrupted run resumes
from the newest one that verifies against its recorded checksums (model, optimiser, data loader
position and RNG state; a damaged newer one is moved aside with a warning, ``checkpoint.load_resumable``),
continuing exactly where it stopped; ``metrics.jsonl`` loses the rows after that step, so every step
keeps one row. ``max_time_s`` stops training at a wall-clock budget and evaluates; ``patience`` stops it
after that many evaluations without a better ``val_loss`` (``training.step.EarlyStopping``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from lmforge.config import ConfigError, opt, retuned
from lmforge.errors import InputError
from lmforge.model.config import ModelConfig, preset
from lmforge.runstore import TOKENIZER_FILE, StageContext, resolve_ref, run_config
from lmforge.training.options import TrainOptions

log = logging.getLogger(__name__)

STAGE = "pretrain"
VERSION = 1


@dataclass
class Config(TrainOptions):
    """Options of ``lmforge pretrain`` (the step, schedule, evaluation and early-stopping options are
    ``TrainOptions``', shared with fine-tuning)."""

    tokenizer: str = opt("@tokenizer", "tokenizer stage directory (tokenizer.json and tokens/)", path=True)
    out: str = opt("", "output stage directory (checkpoints under ckpt/)", path=True)
    model: ModelConfig = opt(ModelConfig(), "model shape (vocab_size 0 = the tokenizer's)")
    objective: Literal["clm", "mlm", "mlm+nsp"] = opt(
        "clm", "clm: next-token (decoder); mlm / mlm+nsp: masked LM (+ next-sentence) on an encoder"
    )
    depth: int = opt(0, "size preset: n_layer = depth, n_embd = 64·depth, n_head = depth (0 = use model.*)")
    packing: Literal["random", "bos_aligned", "shuffled"] = opt(
        "random",
        "where training windows start: random positions, document starts (bos_aligned), or without "
        "replacement epoch by epoch (shuffled: better when a run makes several passes over a small corpus)",
    )
    max_steps: int = retuned(TrainOptions, "max_steps", 1000)
    lr: float = retuned(TrainOptions, "lr", 3e-3)
    warmup_steps: int = retuned(TrainOptions, "warmup_steps", 50)
    weight_decay: float = retuned(TrainOptions, "weight_decay", 0.1)
    eval_every: int = retuned(TrainOptions, "eval_every", 250)
    log_every: int = retuned(TrainOptions, "log_every", 1)
    schedule_clock: Literal["steps", "time"] = opt(
        "steps",
        "length of the schedule: max_steps, or (time, needs max_time_s) the steps projected to fit in the"
        " time budget from the recent step time, so the decay ends at the budget however fast the machine is",
    )
    optimizer: Literal["adamw", "muon", "auto"] = opt(
        "adamw",
        "adamw, muon for the blocks' matrices (AdamW for the rest), or auto: muon unless its Newton-Schulz"
        " work costs too much beside a forward + backward pass on this CPU (measured, cached)",
    )
    muon_lr: float = opt(
        0.0, "peak learning rate of Muon's matrices (0 = lr; the schedule scales both alike)"
    )
    muon_momentum: float = opt(0.95, "Muon's Nesterov momentum (torch's default 0.95)")
    muon_ns_steps: int = opt(5, "Newton-Schulz iterations per Muon step (3 is 40% cheaper)")
    muon_ns_dtype: Literal["auto", "bf16", "fp32"] = opt(
        "auto", "precision of Muon's Newton-Schulz: auto = the faster here, measured (bf16 is torch's)"
    )
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    eval_tokens: int = opt(65536, "validation tokens per evaluation (0 = the whole split)")
    eval_stride: int = opt(
        0,
        "also score validation with sliding windows advancing this many tokens (val_*_sliding metrics;"
        " 0 = off; early stopping and the best checkpoint follow the disjoint-window val_loss)",
    )
    ckpt_every: int = opt(250, "checkpoint every N steps (and at the end)")
    keep_last: int = opt(2, "checkpoints to keep besides the best")
    procs: int | Literal["auto"] = opt(
        1,
        "data-parallel CPU processes started by this command (gloo, no torchrun needed); small models "
        "train faster as N single-threaded ranks than as one N-thread process; batch_size is per rank. "
        "auto: a few timed steps of this model pick N = threads (0: cores) single-threaded ranks or one "
        "N-thread process training N x batch_size rows (the same global batch), cached per machine",
    )
    strategy: Literal["ddp", "fsdp"] = opt(
        "ddp", "data parallelism under torchrun: ddp, or fsdp (FSDP2 per block)"
    )
    compile: bool = opt(
        False, "torch.compile the model (measured slower to start than it gains on short CPU runs)"
    )

    # one set of names with fine-tuning; the old pretrain-only spellings work, with a warning, until the
    # next release
    RENAMED: ClassVar[dict[str, str]] = {
        "early_stop_patience": "patience",
        "early_stop_min_delta": "min_delta",
    }

    def validate(self) -> None:
        super().validate()
        for key in ("ckpt_every", "procs"):
            if getattr(self, key) != "auto" and getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("muon_lr", "eval_tokens", "eval_stride", "keep_last"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0, got {getattr(self, key)}")
        if self.eval_stride > self.model.block_size:
            raise ConfigError(
                "eval_stride",
                f"must be at most model.block_size={self.model.block_size}, got {self.eval_stride}",
            )
        if self.eval_stride and self.objective != "clm":
            raise ConfigError(
                "eval_stride", "sliding-window scoring is for next-token prediction (objective clm)"
            )
        if self.schedule_clock == "time" and self.max_time_s <= 0:
            raise ConfigError("schedule_clock", "'time' follows the time budget: set max_time_s > 0")
        for key in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(key, f"must be in [0, 1), got {getattr(self, key)}")


INPUTS = ("tokenizer",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Pretrain (or return the cached result); returns the stage manifest."""
    check_memory(cfg)
    return run_config(STAGE, cfg, INPUTS, train, version=VERSION, force=force)


def model_config(cfg: Config, vocab: int) -> ModelConfig:
    """The model ``cfg`` trains with a tokenizer of ``vocab`` tokens: ``arch`` from the objective, the
    ``depth`` preset applied, ``vocab_size`` 0 taken from the tokenizer.

    Raises:
        ConfigError: ``model.vocab_size`` is smaller than the tokenizer's, or the result is invalid.
    """
    mcfg = dataclasses.replace(cfg.model, arch="decoder" if cfg.objective == "clm" else "encoder")
    if cfg.depth:
        mcfg = dataclasses.replace(mcfg, **preset(cfg.depth))
    if mcfg.vocab_size == 0:
        mcfg = dataclasses.replace(mcfg, vocab_size=vocab)
    elif mcfg.vocab_size < vocab:
        raise ConfigError("model.vocab_size", f"{mcfg.vocab_size} is smaller than the tokenizer's {vocab}")
    mcfg.validate()
    return mcfg


def most_ranks(cfg: Config) -> int:
    """The most local ranks ``cfg`` can start, each with its own copy of the model: ``procs``, or with
    ``procs: auto`` one per thread it may use (the probe may choose that many)."""
    return (cfg.threads or os.cpu_count() or 1) if cfg.procs == "auto" else cfg.procs


def check_memory(cfg: Config) -> None:
    """Refuse a model that cannot train in the memory available (``model.memory.check_fits``), before the
    stage directory exists; the vocabulary is the tokenizer's when it is already there, else the
    configured one. Every local rank (``procs``) counts with its own copy.

    Raises:
        ConfigError: naming the dominant key (``model.block_size``, ``batch_size``, ``depth``, ...).
    """
    from lmforge.model.memory import check_fits, trains_on_host  # imports torch: not at --help time
    from lmforge.tokenizer.train import load_tokenizer  # imports tokenizers: not at --help time

    try:
        tok_dir = resolve_ref(cfg.tokenizer, Path(cfg.out).expanduser().resolve())
        vocab = load_tokenizer(tok_dir / TOKENIZER_FILE).get_vocab_size()
    except InputError:
        vocab = 0
    try:
        check_fits(
            model_config(cfg, vocab),
            cfg.batch_size,
            ranks=most_ranks(cfg),
            on_host=trains_on_host(cfg.device),
            default_batch=16,
        )
    except ConfigError as exc:
        if cfg.depth and exc.key in ("model.n_layer", "model.n_embd"):  # set by the depth preset
            raise ConfigError("depth", f"{exc.message} (n_layer and n_embd come from depth)") from None
        raise


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """The pretraining loop (every rank of a torchrun job runs it); returns the final metrics.

    With ``procs`` > 1 outside torchrun, it starts that many local ranks that each run this loop.
    """
    from lmforge.training import distributed as ddp

    if cfg.procs == "auto":
        cfg, chosen = choose_layout(cfg, ctx)
        return {**train(cfg, ctx), **chosen}
    if cfg.procs > 1 and ddp.world()[1] == 1:
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.procs)
        per_rank = dataclasses.replace(cfg, threads=threads)
        log.info("training on %d local ranks, %d thread(s) each", cfg.procs, threads)
        return ddp.run_local_ranks(
            cfg.procs, train, per_rank, dataclasses.replace(ctx, metrics=None), log_file=ctx.dir / "stage.log"
        )
    import torch

    from lmforge.eval.lm import evaluate_lm
    from lmforge.log import step_line, truncate_metrics
    from lmforge.model.checkpoint import build_model, save_checkpoint, write_final
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.loader import BatchLoader
    from lmforge.tokenizer.shards import open_tokens
    from lmforge.tokenizer.train import load_tokenizer, token_byte_lengths
    from lmforge.training import checkpoint as ckpt
    from lmforge.training.flops import matmul_peak, raise_peak
    from lmforge.training.objectives import PretrainObjective
    from lmforge.training.optim import build_optimizers, step_lr
    from lmforge.training.precision import auto_dtype, fwd_bwd_ms
    from lmforge.training.step import EarlyStopping, train_step

    ddp.init_distributed("cuda" if cfg.device.startswith("cuda") else "cpu")
    rt = create_runtime(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    main_rank = rt.is_main
    if not main_rank:
        logging.getLogger("lmforge").setLevel(logging.WARNING)
    ddp.barrier()  # rank 0 has prepared the stage directory
    tok_dir = ctx.inputs["tokenizer"]
    tok_path = tok_dir / TOKENIZER_FILE
    tok = load_tokenizer(tok_path)
    vocab = tok.get_vocab_size()
    mcfg = model_config(cfg, vocab)

    objective = PretrainObjective(
        cfg.objective,
        vocab_size=mcfg.vocab_size,
        special_ids={tok.token_to_id(t) for t in tok.get_vocab() if t.startswith(("<|", "["))},
        mask_id=_token_id(tok, "[MASK]"),
        cls_id=_token_id(tok, "[CLS]"),
        sep_id=_token_id(tok, "[SEP]"),
        seed=cfg.seed + 1,
    )
    raw_model = build_model(mcfg, nsp=cfg.objective == "mlm+nsp").to(rt.device)
    probe: dict[str, float] = {}
    if cfg.dtype == "auto" and rt.device == "cpu" and mcfg.arch == "decoder":
        rt, probe = auto_dtype(rt, raw_model, mcfg.block_size, mcfg.vocab_size)
    optim = optimizer_args(cfg, rt.device)
    if optim["kind"] == "auto":  # timed before DDP wraps the model
        optim["fwd_bwd_ms"] = fwd_bwd_ms(
            raw_model, cfg.batch_size, mcfg.block_size, mcfg.vocab_size, rt.dtype
        )
    model = ddp.wrap_model(raw_model, cfg.strategy)
    optimizers = build_optimizers(model, **optim)
    probe.update(getattr(optimizers[0], "probe", {}))
    forward = torch.compile(model) if cfg.compile else model
    # every rank draws the same global batch and trains on its own slice of rows, so N ranks with
    # batch B follow exactly the trajectory of one process with batch N·B
    loader = BatchLoader(
        tok_dir / "tokens" / "train",
        cfg.batch_size * rt.world_size,
        mcfg.block_size,
        seed=cfg.seed,
        packing=cfg.packing,
    )
    rows = slice(rt.rank * cfg.batch_size, (rt.rank + 1) * cfg.batch_size)
    val_tokens = open_tokens(tok_dir / "tokens" / "val")
    token_bytes = token_byte_lengths(tok)
    ckpt_root = ctx.dir / "ckpt"
    if main_rank:
        ckpt_root.mkdir(exist_ok=True)

    step, best_dir, elapsed_before, loss_ema = 0, "", 0.0, math.nan
    stopper = EarlyStopping("min", cfg.patience, cfg.min_delta, best=math.inf)  # follows val_loss
    found = ckpt.load_resumable(ckpt_root, mcfg, move_aside=main_rank)  # the newest that verifies
    if found is not None:
        latest, weights, state = found
        ddp.load_full_state_dicts(model, optimizers, weights, state["optimizer"])
        loader.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])
        step, stopper.best = int(state["step"]), float(state["best_val_loss"])
        best_dir, elapsed_before = str(state["best_dir"]), float(state["elapsed_s"])
        loss_ema, stopper.bad = float(state["loss_ema"]), int(state["bad_evals"])
        log.info("resumed from %s (step %d)", latest.name, step)
    # one row per step, as if never stopped: rows after the resumed step are written again below
    if main_rank and truncate_metrics(ctx.dir / "metrics.jsonl", step):
        log.info("metrics.jsonl: dropped the rows after step %d, which this run writes again", step)

    n_params = raw_model.num_params(non_embedding=True)
    flops_per_token = (
        raw_model.flops_per_token()
        if hasattr(raw_model, "flops_per_token")
        else 6 * raw_model.num_params(non_embedding=False)
    )
    peak_key = (rt.device.split(":")[0], "fp32" if rt.dtype == "fp32" else rt.dtype)
    peak = matmul_peak(*peak_key) * rt.world_size
    tokens_per_step = cfg.batch_size * cfg.grad_accum * mcfg.block_size * rt.world_size
    log.info(
        "model: %.2fM non-embedding params, %d layers, d=%d, vocab %d, context %d; %d tokens/step on %d rank(s)",
        n_params / 1e6,
        mcfg.n_layer,
        mcfg.n_embd,
        mcfg.vocab_size,
        mcfg.block_size,
        tokens_per_step,
        rt.world_size,
    )

    def evaluate() -> dict[str, float]:
        if cfg.objective != "clm":
            return _evaluate_masked(model, val_tokens, mcfg, cfg, objective, rt.device)
        out: dict[str, float] = {}
        windows = {"": None, **({"_sliding": cfg.eval_stride} if cfg.eval_stride else {})}
        for suffix, stride in windows.items():  # disjoint windows, then sliding ones if asked
            r = evaluate_lm(
                model,
                val_tokens,
                block_size=mcfg.block_size,
                batch_size=cfg.batch_size,
                token_bytes=token_bytes,
                max_tokens=cfg.eval_tokens or None,
                device=rt.device,
                stride=stride,
            )
            out.update(
                {
                    f"val_loss{suffix}": r["loss"],
                    f"val_ppl{suffix}": r["perplexity"],
                    f"val_bpb{suffix}": r["bpb"],
                }
            )
        return out

    def save() -> None:
        model_sd, optim_sd = ddp.full_state_dicts(model, optimizers)  # collective: every rank
        if main_rank:
            save_checkpoint(
                ckpt_root / f"step_{step}",
                raw_model,
                mcfg,
                tokenizer_path=tok_path,
                state_dict=model_sd,
                train_state={
                    "optimizer": optim_sd,
                    "loader": loader.state_dict(),
                    "rng": ckpt.rng_state(),
                    "step": step,
                    "best_val_loss": stopper.best,
                    "best_dir": best_dir,
                    "elapsed_s": elapsed_before + (time.perf_counter() - start),
                    "loss_ema": loss_ema,
                    "bad_evals": stopper.bad,
                },
            )
            keep = {ckpt_root / best_dir} if best_dir else set()
            ckpt.prune_checkpoints(ckpt_root, keep_last=max(cfg.keep_last, 1), keep=keep)
        ddp.barrier()

    start = time.perf_counter()
    first_step, step_time = step, None  # step time (EMA) for schedule_clock=time
    last_val: dict[str, float] | None = None
    stop_reason = "max_steps"
    model.train()
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        lr = step_lr(cfg, step, _schedule_length(cfg, step, elapsed_before + t0 - start, step_time))
        micro = [objective.prepare(*(t[rows] for t in loader.next_batch())) for _ in range(cfg.grad_accum)]
        stats = train_step(
            model,
            optimizers,
            [(m, m[2]) for m in micro],  # (batch, targets, supervised tokens)
            lambda m: objective.loss(
                forward, {k: v.to(rt.device) for k, v in m[0].items()}, m[1].to(rt.device), m[2]
            ),
            lr=lr,
            grad_clip=cfg.grad_clip,
            l1=cfg.l1,
            step=step,
            autocast=rt.autocast,
        )
        step += 1
        loss, grad_norm, global_tokens = stats.loss, stats.grad_norm, stats.tokens
        loss_ema = loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss
        dt = time.perf_counter() - t0
        elapsed = elapsed_before + time.perf_counter() - start
        if step > first_step + 1:  # the first step of a process (warm-up, compilation) is not typical
            step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
        tps = global_tokens / dt
        peak = raise_peak(*peak_key, tps * flops_per_token, peak, rt.world_size) if peak > 0 else peak
        mfu = tps * flops_per_token / peak if peak > 0 else 0.0
        if main_rank:
            ctx.log_metrics(
                {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tps,
                    "mfu": mfu,
                    "elapsed_s": elapsed,
                }
            )
            if step % cfg.log_every == 0 or step == 1:
                log.info(
                    step_line(
                        step,
                        cfg.max_steps,
                        {"ema_loss": loss_ema, "lr": lr, "gnorm": grad_norm, "tokens_per_s": tps, "mfu": mfu},
                        elapsed,
                        cfg.max_time_s,
                    )
                )
        out_of_time = cfg.max_time_s > 0 and ddp.all_reduce_sum(elapsed >= cfg.max_time_s) > 0
        final = step == cfg.max_steps or out_of_time
        if step % cfg.eval_every == 0 or final:
            last_val = evaluate()
            model.train()
            if main_rank:
                ctx.log_metrics({"step": step, **last_val})
            log.info("step %d: %s", step, " | ".join(f"{k} {v:.4f}" for k, v in last_val.items()))
            if stopper.update(last_val["val_loss"]):
                best_dir = f"step_{step}"
            if stopper.stop:
                final, stop_reason = True, "early_stop"
                log.info(
                    "early stop: no val improvement in %d evaluations (best %.4f at %s)",
                    stopper.bad,
                    stopper.best,
                    best_dir,
                )
        if out_of_time:
            stop_reason = "time_budget"
            log.warning(
                "time budget of %.0fs reached at step %d of %d planned (%s)",
                cfg.max_time_s,
                step,
                cfg.max_steps,
                "the schedule_clock 'time' learning rate decayed over the steps that fit"
                if cfg.schedule_clock == "time"
                else "the learning rate had not finished its schedule: schedule_clock: time fits it to the budget",
            )
        if step % cfg.ckpt_every == 0 or final or step % cfg.eval_every == 0 and best_dir == f"step_{step}":
            save()
        if final:
            break

    if last_val is None:  # resumed after the final checkpoint was written
        last_val = evaluate()
    last_dir = f"step_{step}"
    if main_rank:
        write_final(ckpt_root, last=last_dir, best=best_dir or last_dir, step=step, stop_reason=stop_reason)
    ddp.barrier()
    train_time = elapsed_before + time.perf_counter() - start
    return {
        **last_val,
        "best_val_loss": min(stopper.best, last_val["val_loss"]),
        "train_loss": loss_ema,
        "steps": step,
        "tokens": step * tokens_per_step,
        "params": n_params,
        "train_time_s": train_time,
        "tokens_per_s": step * tokens_per_step / max(train_time, 1e-9),
        "early_stopped": int(stop_reason == "early_stop"),
        **probe,
        "steps_planned": cfg.max_steps,
        "stopped_by_time_budget": int(stop_reason == "time_budget"),
        "world_size": rt.world_size,
    }


def optimizer_args(cfg: Config, device: str) -> dict[str, Any]:
    """``optim.build_optimizers``' arguments after the model for ``cfg`` on ``device`` (the ``auto``
    choices are measured on a CPU only: elsewhere Muon, with torch's bf16 Newton–Schulz)."""
    on_cpu = device == "cpu"
    return {
        "kind": "muon" if cfg.optimizer == "auto" and not on_cpu else cfg.optimizer,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "betas": (cfg.beta1, cfg.beta2),
        "ns_steps": cfg.muon_ns_steps,
        "muon_lr": cfg.muon_lr,
        "muon_momentum": cfg.muon_momentum,
        "ns_dtype": "bf16" if cfg.muon_ns_dtype == "auto" and not on_cpu else cfg.muon_ns_dtype,
    }


def choose_layout(cfg: Config, ctx: StageContext) -> tuple[Config, dict[str, float]]:
    """``cfg`` with ``procs: auto`` resolved, and what to record: on a CPU outside torchrun, N = ``threads``
    (0: the cores) single-threaded ranks of ``batch_size`` rows or one N-thread process of N·``batch_size``
    rows, whichever trains this model's step faster here (``training/layout.py``, cached per machine
    and shape); else one process."""
    import json

    import torch

    from lmforge.tokenizer.train import load_tokenizer
    from lmforge.training import distributed as ddp
    from lmforge.training import layout

    cores = most_ranks(cfg)  # N: the threads it may use, as many ranks as the memory check counted
    on_cpu = cfg.device == "cpu" or cfg.device == "auto" and not torch.cuda.is_available()
    if not on_cpu or ddp.world()[1] > 1 or cfg.objective != "clm":
        return dataclasses.replace(cfg, procs=1), {}
    mcfg = model_config(cfg, load_tokenizer(ctx.inputs["tokenizer"] / TOKENIZER_FILE).get_vocab_size())
    optim = optimizer_args(cfg, "cpu")
    shape = json.dumps([dataclasses.asdict(mcfg), cfg.batch_size, optim, cfg.dtype], sort_keys=True)
    procs, timings = layout.choose_procs(
        cores, lambda kind: layout.layout_step_ms(kind, cores, mcfg, cfg.batch_size, optim, cfg.dtype), shape
    )
    rows = cfg.batch_size * (1 if procs > 1 else cores)
    chosen = dataclasses.replace(cfg, procs=procs, threads=cores // procs, batch_size=rows)
    return chosen, {**timings, "procs": procs, "threads": cores // procs, "batch_size": rows}


def _schedule_length(cfg: Config, step: int, elapsed: float, step_time: float | None) -> int:
    """Steps the learning-rate schedule spans: ``max_steps``, or with ``schedule_clock: time`` the steps
    projected to fit in ``max_time_s`` (steps done + remaining time / recent step time, ranks averaged),
    capped at ``max_steps``. Before a step time is known (the first steps, usually warmup) it is
    ``max_steps``; the projection never ends the schedule before the current step or the warmup."""
    if cfg.schedule_clock != "time" or step_time is None or step_time <= 0:
        return cfg.max_steps
    from lmforge.training import distributed as ddp

    projected = step + max(0.0, cfg.max_time_s - elapsed) / step_time
    _, world = ddp.world()
    if world > 1:
        projected = ddp.all_reduce_sum(projected) / world
    return int(min(cfg.max_steps, max(projected, step + 1, cfg.warmup)))


def _token_id(tok: Any, token: str) -> int:
    found = tok.token_to_id(token)
    return -1 if found is None else int(found)


def _evaluate_masked(
    model: Any, tokens: Any, mcfg: ModelConfig, cfg: Config, objective: Any, device: str
) -> dict:
    """Masked-LM validation: the same fixed-seed masks every time, over non-overlapping windows."""
    import numpy as np
    import torch

    from lmforge.training.objectives import PretrainObjective

    fixed = PretrainObjective(
        objective.kind,
        vocab_size=objective.vocab_size,
        special_ids=objective.special_ids,
        mask_id=objective.mask_id,
        cls_id=objective.cls_id,
        sep_id=objective.sep_id,
        seed=0,
    )
    T = mcfg.block_size
    n_windows = max(1, min(len(tokens), cfg.eval_tokens or len(tokens)) // T)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n_windows, cfg.batch_size):
            stop = min(start + cfg.batch_size, n_windows)
            rows = [np.asarray(tokens[i * T : (i + 1) * T], dtype=np.int64) for i in range(start, stop)]
            rows = [r for r in rows if len(r) == T]
            if not rows:
                break
            x = torch.from_numpy(np.stack(rows))
            batch, targets, n = fixed.prepare(x, x)
            batch = {k: v.to(device) for k, v in batch.items()}
            total += float(fixed.loss(model, batch, targets.to(device), n))
            count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}  # no bits per byte for a masked LM
