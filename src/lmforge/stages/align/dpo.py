"""Direct preference optimisation on chosen/rejected pairs (stage kind ``align.dpo``).

DPO (Rafailov et al. 2023) trains the policy so that its log-probability ratio to a frozen reference
rises on the chosen reply and falls on the rejected one: loss ``−log σ(β h)`` (or IPO's squared loss).
The reference is the starting model; its log-probabilities of every pair are computed once before the
first step (the policy equals the reference then), so no second model is held in memory. The policy
is the whole model, or LoRA adapters (``lora_r`` > 0). Data: ``data.preferences`` (HH-RLHF text,
prompt/chosen/rejected, conversation pairs, rankings). Metrics on held-out pairs: ``val_loss``,
``reward_accuracy`` (chosen implicit reward above rejected), ``reward_margin``, and ``kl``: the policy's
summed log-ratio to the reference over its own sampled replies to ``n_kl`` held-out prompts (for that
a reference copy is kept, or LoRA disabled). ``metrics.jsonl`` also has every step's training-batch
``{"step", "reward_accuracy", "reward_margin"}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, config_inputs, run_stage
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
    lr: float = opt(5e-5, "peak learning rate")
    batch_size: int = opt(8, "pairs per micro-batch")
    weight_decay: float = opt(0.0, "decoupled weight decay (L2) on trainable matrices")
    lora_r: int = opt(0, "train LoRA adapters of this rank instead of every weight (0 = full model)")
    lora_alpha: float = opt(16.0, "LoRA scale numerator (update = alpha / r · B A)")
    max_train_examples: int = opt(0, "use at most this many training pairs (0 = all)")
    reward_model: str = opt(
        "", "align.reward model judging the win rate over the starting model ('' = no judging)", path=True
    )
    n_judge: int = opt(64, "held-out prompts answered by both models for the win rate")
    n_kl: int = opt(16, "held-out prompts the policy answers at each evaluation for its KL (0 = none)")
    judge_tokens: int = opt(48, "tokens per judged reply at most")

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "at least one preference file is required (--train pairs.jsonl)")
        if self.beta <= 0:
            raise ConfigError("beta", f"must be > 0, got {self.beta}")
        for key in ("n_judge", "judge_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("lora_r", "max_train_examples", "n_kl"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0, got {getattr(self, key)}")


INPUTS = ("model", "train", "val", "reward_model")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train with DPO (or return the cached result); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/dpo)")
    found = {"model": cfg.model, **config_inputs(cfg, "train", "val", "reward_model")}
    return run_stage(STAGE, cfg, out=cfg.out, inputs=found, work=work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read and encode the pairs, precompute the reference, run ``finetune.fit`` on the DPO loss."""
    from pathlib import Path

    import numpy as np
    import torch

    from lmforge.data.supervised import holdout, log_problems, skipped
    from lmforge.inference.engine import Engine, SamplingParams
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.chat import render_chat
    from lmforge.tokenizer.train import load_tokenizer, special_id
    from lmforge.training import align
    from lmforge.training import finetune as ft
    from lmforge.training.batches import lm_batch

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    ft.restart(ctx)
    model, mcfg, ckpt_dir = ft.load_decoder(
        ctx.inputs["model"], cfg.checkpoint, method="DPO", device=rt.device, dropout=cfg.dropout
    )
    tok_path = ckpt_dir / "tokenizer.json"
    tok = load_tokenizer(tok_path)
    pad_id = special_id(tok, "pad")
    problems: list = []
    train = align.read_preference_split(
        [p for k, p in sorted(ctx.inputs.items()) if k.startswith("train")], problems
    )
    if "val" in ctx.inputs:
        val = align.read_preference_split([ctx.inputs["val"]], problems)
    else:
        train, val = holdout(train, cfg.val_fraction or 0.1, cfg.seed)
    log_problems(problems, "preference data")
    train = train[: cfg.max_train_examples or None]
    train_pairs, dropped = align.encode_pairs(tok, train, mcfg.block_size)
    val_pairs, val_dropped = align.encode_pairs(tok, val[: cfg.max_eval_examples or None], mcfg.block_size)
    if not train_pairs or not val_pairs:
        raise ConfigError(
            "train", f"no usable pairs: {len(train_pairs)} for training, {len(val_pairs)} held out"
        )
    device = rt.device
    lora = None
    if cfg.lora_r:
        from lmforge.model.lora import LoraConfig, apply_lora

        lora = LoraConfig(r=cfg.lora_r, alpha=cfg.lora_alpha)
        apply_lora(model, lora)

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
            lp, _ = align.sequence_logprobs(model, *tensors(chunk))
            out.append(lp.view(2, len(chunk)).T)
        model.train(was)
        return torch.cat(out)

    ref_train, ref_val = logps(train_pairs), logps(val_pairs)  # the reference = the model before any step
    reference = align.Reference(model) if cfg.n_kl else None  # only for the KL of sampled replies
    kl_prompts = [
        render_chat(tok, list(p.prompt), add_generation_prompt=True)[0][
            -(mcfg.block_size - cfg.judge_tokens) :
        ]
        for p in val[: cfg.n_kl]
    ]
    end_id = special_id(tok, "end")
    logger.info(
        "%d training pairs, %d held out, %d dropped", len(train_pairs), len(val_pairs), dropped + val_dropped
    )
    rng = np.random.default_rng(cfg.seed)
    seen = {"correct": 0.0, "pairs": 0}
    step_seen = {"calls": 0, "correct": 0.0, "margin": 0.0, "pairs": 0}

    def next_batch() -> tuple[Any, int]:
        rows = rng.integers(0, len(train_pairs), size=cfg.batch_size)
        return ([train_pairs[i] for i in rows], ref_train[torch.as_tensor(rows)]), len(rows)

    def loss_sum(batch: Any) -> torch.Tensor:
        pairs, ref = batch
        lp, _ = align.sequence_logprobs(model, *tensors(pairs))
        pc, pr = lp.view(2, len(pairs))
        losses, rc, rr = align.dpo_loss(pc, pr, ref[:, 0], ref[:, 1], cfg.beta, cfg.loss_type)
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

    @torch.no_grad()
    def sampled_kl() -> float:  # summed log π/π_ref over the policy's own replies, averaged
        params = SamplingParams(
            max_new_tokens=cfg.judge_tokens, temperature=1.0, seed=cfg.seed + 7, stop_ids=frozenset({end_id})
        )
        was = model.training
        model.eval()
        ro = align.rollout(
            Engine(model, tok), kl_prompts, lambda i, c: 0.0, group_size=1, params=params,
            pad_id=pad_id, reference=reference,
        )  # fmt: skip
        model.train(was)
        return float(((ro.old_logp - ro.ref_logp) * ro.m).sum(dim=1).mean())

    def evaluate() -> dict[str, float]:
        pol = logps(val_pairs)
        losses, rc, rr = align.dpo_loss(
            pol[:, 0], pol[:, 1], ref_val[:, 0], ref_val[:, 1], cfg.beta, cfg.loss_type
        )
        return {
            "val_loss": float(losses.mean()),
            "reward_accuracy": float((rc > rr).float().mean()),
            "reward_margin": float((rc - rr).mean()),
            "chosen_reward": float(rc.mean()),
            "rejected_reward": float(rr.mean()),
            **({"kl": sampled_kl()} if kl_prompts else {}),
        }

    result = ft.fit(
        model,
        cfg,
        next_batch=next_batch,
        loss_sum=loss_sum,
        evaluate=evaluate,
        monitor="val_loss",
        log_metrics=ctx.log_metrics,
    )

    def save(d: Path) -> None:
        meta = {"method": "dpo", "base": str(ckpt_dir), "beta": cfg.beta, "loss_type": cfg.loss_type}
        ft.save_policy(d, model, mcfg, tokenizer_path=tok_path, meta=meta, lora=lora, base=ckpt_dir)

    ft.save_best_and_last(ctx.dir / "ckpt", model, result, save)
    judged: dict[str, float] = {}
    if "reward_model" in ctx.inputs:  # the best policy against the starting model, judged by the RM
        base, _, _ = ft.load_base(ctx.inputs["model"], cfg.checkpoint, device=device)
        rm = align.load_reward_model(ctx.inputs["reward_model"]).to(device)
        prompts = [p.prompt for p in val[: cfg.n_judge]]
        found = align.judge_against_base(
            model, base, rm, tok, prompts, max_new_tokens=cfg.judge_tokens, seed=cfg.seed
        )
        judged = {f"dpo_{k}": v for k, v in found.items()}
        logger.info("judged by %s: %s", ctx.inputs["reward_model"], judged)
    return {
        **judged,
        **result.best_metrics,
        "base_val_loss": result.initial_metrics["val_loss"],
        "train_loss": result.train_loss,
        "train_reward_accuracy": seen["correct"] / max(seen["pairs"], 1),
        "steps": result.steps,
        "best_step": result.best_step,
        "train_pairs": len(train_pairs),
        "val_pairs": len(val_pairs),
        "dropped_pairs": dropped + val_dropped,
        "skipped_records": skipped(problems),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_time_s": result.train_time_s,
    }
