"""Direct preference optimisation on chosen/rejected pairs (stage kind ``align.dpo``).

DPO (Rafailov et al. 2023) trains the policy so that its log-probability ratio to a frozen reference
rises on the chosen reply and falls on the rejected one: loss ``−log σ(β h)`` (or IPO's squared loss).
The reference is the starting model; its log-probabilities of every pair are computed once before the
first step (the policy equals the reference then), so no second model is held in memory. The policy
is the whole model, or LoRA adapters (``lora_r`` > 0). Data: ``data.preferences`` (HH-RLHF text,
prompt/chosen/rejected, conversation pairs, rankings). The best step is chosen on a selection set
carved from the training pairs (``val_fraction``): by their DPO loss (``select_*`` in the evaluations),
or with ``monitor: win_rate`` by the reward model's win rate on ``n_kl`` selection prompts; each
evaluation also has ``kl``, the policy's summed log-ratio to the reference over its own sampled replies
to those prompts, and with a ``reward_model`` their ``win_rate`` over the starting model's replies. The
held-out pairs (``val``, or ``val_fraction`` of ``train``) are scored once, by the chosen weights:
``val_loss``, ``reward_accuracy`` (chosen implicit reward above rejected), ``reward_margin``; with a
``reward_model``, the policy and the starting model answer ``n_judge`` held-out prompts and it judges
them (``training.judge.WinRate``): ``dpo_win_rate``, ``dpo_kl``; a ``check_model`` judges the same
replies as a second signal (``dpo_check_win_rate``). ``metrics.jsonl`` also has every step's
training-batch ``{"step", "reward_accuracy", "reward_margin"}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, above, at_least, opt, retuned
from lmforge.runstore import StageContext, run_config
from lmforge.training.options import FinetuneOptions

logger = logging.getLogger(__name__)

STAGE = "align.dpo"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge align dpo``."""

    train: list[str] = opt([], "preference files (.jsonl, optionally compressed)", path=True)
    val: str = opt("", "held-out preference file ('' = hold out val_fraction of train)", path=True)
    beta: float = opt(0.1, "β: strength of the pull towards the reference (KL weight)")
    loss_type: Literal["sigmoid", "ipo"] = opt("sigmoid", "sigmoid = DPO, ipo = IPO's squared loss")
    lr: float = retuned(FinetuneOptions, "lr", 5e-5)
    batch_size: int = opt(8, "pairs per micro-batch")
    weight_decay: float = retuned(FinetuneOptions, "weight_decay", 0.0)
    lora_r: int = opt(0, "train LoRA adapters of this rank instead of every weight (0 = full model)")
    lora_alpha: float = opt(16.0, "LoRA scale numerator (update = alpha / r · B A)")
    max_train_examples: int = opt(0, "use at most this many training pairs (0 = all)")
    reward_model: str = opt(
        "", "align.reward model judging the win rate over the starting model ('' = no judging)", path=True
    )
    n_judge: int = opt(64, "held-out prompts answered by both models for the win rate")
    check_model: str = opt(
        "", "a second align.reward model judging the same replies (not the training signal)", path=True
    )
    n_kl: int = opt(16, "selection prompts the policy answers at each evaluation: KL, win rate (0 = none)")
    judge_tokens: int = opt(48, "tokens per judged reply at most")
    monitor: Literal["select_loss", "win_rate"] = opt(
        "select_loss",
        "what chooses the best step: the DPO loss of the selection pairs, or the reward model's win rate"
        " on the n_kl selection prompts",
    )

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "at least one preference file is required (--train pairs.jsonl)")
        above(self, 0, "beta")
        at_least(self, 1, "n_judge", "judge_tokens")
        at_least(self, 0, "lora_r", "max_train_examples", "n_kl")
        if self.monitor == "win_rate" and not (self.reward_model and self.n_kl):
            raise ConfigError("monitor", "win_rate needs a reward_model and n_kl > 0 selection prompts")


INPUTS = ("model", "train", "val", "reward_model", "check_model")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train with DPO (or return the cached result); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read and encode the pairs, precompute the reference, run ``finetune.fit`` on the DPO loss."""
    from pathlib import Path

    import numpy as np
    import torch

    from lmforge.data.preferences import read_preferences
    from lmforge.data.supervised import log_problems, skipped
    from lmforge.model.lora import lora_policy
    from lmforge.tokenizer.train import special_id
    from lmforge.training import finetune as ft
    from lmforge.training.batches import lm_batch
    from lmforge.training.judge import WinRate, distinct_prompts, load_scorer
    from lmforge.training.logprobs import Reference, sequence_logprobs
    from lmforge.training.losses import dpo_loss
    from lmforge.training.preferences import encode_pairs, three_sets

    rt, model, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx, "DPO")
    pad_id = special_id(tok, "pad")
    train, select, val, problems = three_sets(read_preferences, ctx.inputs, cfg)
    log_problems(problems, "preference data")
    train = train[: cfg.max_train_examples or None]
    train_pairs, dropped = encode_pairs(tok, train, mcfg.block_size)
    select_pairs, select_dropped = encode_pairs(tok, select[: cfg.max_eval_examples or None], mcfg.block_size)
    val_pairs, val_dropped = encode_pairs(tok, val, mcfg.block_size)
    dropped += select_dropped
    if not train_pairs or not val_pairs or not select_pairs:
        raise ConfigError(
            "train",
            f"no usable pairs: {len(train_pairs)} for training, {len(select_pairs)} to choose the step,"
            f" {len(val_pairs)} held out",
        )
    device = rt.device
    lora = lora_policy(model, cfg.lora_r, cfg.lora_alpha)

    def tensors(pairs: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, m = lm_batch(
            [c for c, _ in pairs] + [r for _, r in pairs], pad_id
        )  # chosen rows, then rejected
        return x.to(device), y.to(device), m.to(device)

    @torch.no_grad()
    def logps(pairs: list) -> torch.Tensor:  # [n, 2] summed log-probs (chosen, rejected), eval mode
        was = model.training
        model.eval()
        out = []
        for s in range(0, len(pairs), 2 * cfg.batch_size):
            chunk = pairs[s : s + 2 * cfg.batch_size]
            lp, _ = sequence_logprobs(model, *tensors(chunk))
            out.append(lp.view(2, len(chunk)).T)
        model.train(was)
        return torch.cat(out)

    # the reference = the model before any step
    ref_train, ref_select, ref_val = logps(train_pairs), logps(select_pairs), logps(val_pairs)
    judges = (
        {"reward": load_scorer(ctx.inputs["reward_model"], device)} if "reward_model" in ctx.inputs else {}
    )
    if judges and "check_model" in ctx.inputs:
        judges["check"] = load_scorer(ctx.inputs["check_model"], device)
    sample = {"max_new_tokens": cfg.judge_tokens, "seed": cfg.seed + 7}
    # the starting model's replies, sampled now: to selection prompts (curves), to held-out ones (final)
    select_judge = (
        WinRate(model, tok, distinct_prompts(select)[: cfg.n_kl], judges, **sample) if cfg.n_kl else None
    )
    final_judge = (
        WinRate(model, tok, distinct_prompts(val)[: cfg.n_judge], judges, **sample) if judges else None
    )
    reference = Reference(model) if select_judge or final_judge else None
    logger.info(
        "%d training pairs (%d more choose the best step), %d held out, %d dropped",
        len(train_pairs),
        len(select_pairs),
        len(val_pairs),
        dropped + val_dropped,
    )
    rng = np.random.default_rng(cfg.seed)
    seen = {"correct": 0.0, "pairs": 0}
    step_seen = {"calls": 0, "correct": 0.0, "margin": 0.0, "pairs": 0}

    def next_batch() -> tuple[Any, int]:
        rows = rng.integers(0, len(train_pairs), size=cfg.batch_size)
        return ([train_pairs[i] for i in rows], ref_train[torch.as_tensor(rows)]), len(rows)

    def loss_sum(batch: Any) -> torch.Tensor:
        pairs, ref = batch
        lp, _ = sequence_logprobs(model, *tensors(pairs))
        pc, pr = lp.view(2, len(pairs))
        losses, rc, rr = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], cfg.beta, cfg.loss_type)
        seen["correct"] += float((rc > rr).sum())
        seen["pairs"] += len(pairs)
        step_seen["calls"] += 1
        step_seen["correct"] += float((rc > rr).sum())
        step_seen["margin"] += float((rc - rr).sum())
        step_seen["pairs"] += len(pairs)
        if step_seen["calls"] % cfg.grad_accum == 0:  # the step's training-batch implicit rewards
            n = max(step_seen["pairs"], 1)
            ctx.log_metrics(
                {
                    "step": step_seen["calls"] // cfg.grad_accum,
                    "reward_accuracy": step_seen["correct"] / n,
                    "reward_margin": step_seen["margin"] / n,
                }
            )
            step_seen.update(correct=0.0, margin=0.0, pairs=0)
        return losses.sum()

    def pair_metrics(pairs: list, ref: torch.Tensor, prefix: str) -> dict[str, float]:
        pol = logps(pairs)
        losses, rc, rr = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], cfg.beta, cfg.loss_type)
        return {
            f"{prefix}loss": float(losses.mean()),
            f"{prefix}reward_accuracy": float((rc > rr).float().mean()),
            f"{prefix}reward_margin": float((rc - rr).mean()),
            f"{prefix}chosen_reward": float(rc.mean()),
            f"{prefix}rejected_reward": float(rr.mean()),
        }

    def evaluate() -> dict[str, float]:
        found = pair_metrics(select_pairs, ref_select, "select_")
        return found | (select_judge(model, reference) if select_judge else {})

    result = ft.fit(
        model,
        cfg,
        next_batch,
        loss_sum,
        evaluate,
        monitor=cfg.monitor,
        log_metrics=ctx.log_metrics,
    )

    def save(d: Path) -> None:
        meta = {"method": "dpo", "base": str(ckpt_dir), "beta": cfg.beta, "loss_type": cfg.loss_type}
        ft.save_policy(d, model, mcfg, tokenizer_path=tok_path, meta=meta, lora=lora, base=ckpt_dir)

    ft.save_best_and_last(ctx.dir / "ckpt", model, result, save)  # the model now holds the best weights
    held = pair_metrics(val_pairs, ref_val, "")
    judged: dict[str, float] = {}
    if final_judge:  # the best policy against the starting model on held-out prompts
        judged = {f"dpo_{k}": v for k, v in final_judge(model, reference).items()}
        logger.info("judged on %d held-out prompts: %s", len(final_judge.prompts), judged)
    return {
        **judged,
        **result.best_metrics,
        "val_loss": held["loss"],
        "reward_accuracy": held["reward_accuracy"],
        "reward_margin": held["reward_margin"],
        "base_val_loss": result.initial_metrics["select_loss"],  # ln 2: the policy is the reference
        "train_loss": result.train_loss,
        "train_reward_accuracy": seen["correct"] / max(seen["pairs"], 1),
        "steps": result.steps,
        "best_step": result.best_step,
        "train_pairs": len(train_pairs),
        "select_pairs": len(select_pairs),
        "val_pairs": len(val_pairs),
        "dropped_pairs": dropped + val_dropped,
        "skipped_records": skipped(problems),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_time_s": result.train_time_s,
    }
