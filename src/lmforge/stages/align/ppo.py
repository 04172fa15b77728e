"""PPO-RLHF against a reward model (stage kind ``align.ppo``).

The RLHF loop of Ouyang et al. 2022 (after Ziegler et al. 2019): the policy samples replies to prompts
through the inference engine; a reward model (``align.reward``) scores each whole conversation; the
per-token reward is ``−kl_coef · (log π − log π_ref)`` plus that score on the last reply token; a value
head (``ScalarHead(pooling="none")`` on the policy's final hidden states) gives GAE advantages
(Schulman et al. 2016), whitened over the batch's reply tokens; the loss is PPO's clipped surrogate plus
``vf_coef`` × the clipped value loss (Schulman et al. 2017), for ``updates_per_rollout`` steps per
rollout (the pieces: ``training.ppo``). The reference is the LoRA-disabled policy or a frozen copy. Prompts: the prompts of
preference files (``data.preferences``; chosen/rejected are ignored). The reward model scores text
(``training.judge.TextScorer``: the reply is decoded and re-tokenised with the reward model's own
tokenizer), so it may be an imported encoder with another vocabulary.

Each evaluation samples replies (fixed seed) to ``n_eval`` selection prompts carved from the training
prompts (``val_fraction``) and reports the reward model's mean ``score``, the ``win_rate`` over the
starting model's replies to the same prompts, and the policy's ``kl`` to the reference (summed over a
reply's tokens, averaged over replies); the best step is chosen by ``score`` there. The held-out
prompts (``val``, or ``val_fraction`` of ``prompts``) are judged once at the end, ``n_judge`` of them:
``ppo_win_rate``, ``ppo_kl``, ``ppo_policy_score``, ``ppo_base_score``, and with a ``check_model``
(a second reward model, not trained on) ``ppo_check_win_rate``. ``metrics.jsonl`` has every
rollout's ``{"step", "reward", "rollout_kl"}`` (the training prompts' replies).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, above, at_least, opt, retuned
from lmforge.runstore import StageContext, run_config
from lmforge.training.options import FinetuneOptions

logger = logging.getLogger(__name__)

STAGE = "align.ppo"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge align ppo``."""

    reward_model: str = opt("@reward", "reward model: an align.reward stage or checkpoint", path=True)
    prompts: list[str] = opt([], "preference files whose prompts are used (.jsonl)", path=True)
    val: str = opt(
        "", "preference file of held-out prompts ('' = hold out val_fraction of prompts)", path=True
    )
    check_model: str = opt(
        "", "a second align.reward model judging the held-out replies (not the training signal)", path=True
    )
    n_judge: int = opt(64, "held-out prompts judged against the starting model at the end")
    batch_size: int = opt(4, "prompts per micro-batch")
    samples_per_prompt: int = opt(2, "replies sampled per prompt")
    max_new_tokens: int = opt(32, "tokens per reply at most")
    temperature: float = opt(1.0, "sampling temperature of the rollouts")
    kl_coef: float = opt(0.05, "per-token KL penalty to the reference, in reward units")
    clip_eps: float = opt(0.2, "PPO clip range of the probability ratio (and of the value change)")
    vf_coef: float = opt(0.5, "weight of the value loss")
    gamma: float = opt(1.0, "discount")
    lam: float = opt(0.95, "GAE λ")
    updates_per_rollout: int = opt(2, "optimiser steps on each rollout (PPO epochs)")
    n_eval: int = opt(32, "selection prompts (carved from training) scored at each evaluation")
    lr: float = retuned(FinetuneOptions, "lr", 1e-5)
    weight_decay: float = retuned(FinetuneOptions, "weight_decay", 0.0)
    lora_r: int = opt(0, "train LoRA adapters of this rank instead of every weight (0 = full model)")
    lora_alpha: float = opt(16.0, "LoRA scale numerator (update = alpha / r · B A)")

    def validate(self) -> None:
        super().validate()
        if not self.prompts:
            raise ConfigError(
                "prompts", "at least one preference file is required (--prompts '[pairs.jsonl]')"
            )
        at_least(self, 1, "samples_per_prompt", "max_new_tokens", "updates_per_rollout", "n_eval", "n_judge")
        at_least(self, 0, "kl_coef", "clip_eps", "vf_coef", "lora_r")
        above(self, 0, "temperature")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError("gamma", f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")


INPUTS = ("model", "reward_model", "prompts", "val", "check_model")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train with PPO (or return the cached result); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Rollouts scored by the reward model, GAE, PPO updates through ``finetune.fit``."""
    from pathlib import Path

    import numpy as np
    import torch

    from lmforge.data.preferences import read_preferences
    from lmforge.data.supervised import holdout, log_problems, read_files
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams
    from lmforge.model.lora import lora_policy
    from lmforge.tokenizer.chat import render_chat
    from lmforge.tokenizer.train import special_id
    from lmforge.training import finetune as ft
    from lmforge.training import ppo
    from lmforge.training.judge import WinRate, distinct_prompts, load_scorer
    from lmforge.training.logprobs import Reference

    rt, model, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx, "PPO")
    device = rt.device
    judges = {"reward": load_scorer(ctx.inputs["reward_model"], device)}
    if "check_model" in ctx.inputs:
        judges["check"] = load_scorer(ctx.inputs["check_model"], device)
    pad_id, end_id = special_id(tok, "pad"), special_id(tok, "end")
    problems: list = []
    prefs = read_files(
        read_preferences, [p for k, p in sorted(ctx.inputs.items()) if k.startswith("prompts")], problems
    )
    train = distinct_prompts(prefs)
    if "val" in ctx.inputs:
        held = distinct_prompts(read_files(read_preferences, [ctx.inputs["val"]], problems))
    else:
        train, held = holdout(train, cfg.val_fraction or 0.1, cfg.seed)
    log_problems(problems, "prompts")
    # the best step is chosen on prompts carved from training: the held-out prompts are judged once
    train, select = holdout(train, cfg.val_fraction or 0.1, cfg.seed + 1)
    select, held = select[: cfg.n_eval], held[: cfg.n_judge]
    if not train or not held or not select:
        raise ConfigError(
            "prompts",
            f"need prompts to train on, to choose the step and to hold out, got {len(train)}, {len(select)}"
            f" and {len(held)}",
        )
    lora = lora_policy(model, cfg.lora_r, cfg.lora_alpha)
    reference = Reference(model)
    sample = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "seed": cfg.seed + 7}
    # the starting model's replies, sampled now: to selection prompts (curves), to held-out ones (final)
    select_judge = WinRate(model, tok, select, {"reward": judges["reward"]}, **sample)
    final_judge = WinRate(model, tok, held, judges, **sample)
    torch.manual_seed(cfg.seed)
    pv = ppo.PolicyWithValue(model)  # one trunk pass gives log-probs and values
    engine = Engine(model, tok)
    budget = mcfg.block_size - cfg.max_new_tokens

    def prompt_ids(p: tuple) -> list[int]:
        return render_chat(tok, list(p), add_generation_prompt=True)[0][-budget:]

    def sample(chosen: list, seed: int) -> ppo.PPOBatch:
        def scores(rows: list[list[int]], completions: list) -> torch.Tensor:  # reward model [B], as text
            texts = [tok.decode(c.ids, skip_special_tokens=True) for c in completions]
            return judges["reward"]([chosen[i // cfg.samples_per_prompt] for i in range(len(texts))], texts)

        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=seed,
            stop_ids=frozenset({end_id}),
        )
        return ppo.ppo_batch(
            pv,
            engine,
            [prompt_ids(p) for p in chosen],
            scores,
            samples_per_prompt=cfg.samples_per_prompt,
            params=params,
            pad_id=pad_id,
            end_id=end_id,
            reference=reference,
            kl_coef=cfg.kl_coef,
            gamma=cfg.gamma,
            lam=cfg.lam,
        )

    rng = np.random.default_rng(cfg.seed)
    buffer: list = []
    state = {"calls": 0}

    def next_batch() -> tuple[Any, int]:
        calls = state["calls"]
        state["calls"] += 1
        slot = calls % cfg.grad_accum
        if calls % (cfg.grad_accum * cfg.updates_per_rollout) >= cfg.grad_accum:
            return buffer[slot], int(buffer[slot].ro.m.sum())
        chosen = [train[i] for i in rng.integers(0, len(train), size=cfg.batch_size)]
        batch = sample(chosen, cfg.seed + 1000 * calls)
        ctx.log_metrics(
            {
                "step": calls // cfg.grad_accum + 1,
                "reward": float(batch.scores.mean()),
                "rollout_kl": float(batch.kl.mean()),
            }
        )
        buffer[slot:] = [batch]
        return batch, int(batch.ro.m.sum())

    def loss_sum(batch: ppo.PPOBatch) -> torch.Tensor:
        return ppo.ppo_loss_sum(pv, batch, clip_eps=cfg.clip_eps, vf_coef=cfg.vf_coef)

    def evaluate() -> dict[str, float]:
        found = select_judge(model, reference)
        return {"score": found.pop("policy_score"), **found}

    result = ft.fit(pv, cfg, next_batch, loss_sum, evaluate, monitor="score", log_metrics=ctx.log_metrics)

    def save(d: Path) -> None:
        meta = {"method": "ppo", "base": str(ckpt_dir)}
        ft.save_policy(d, model, mcfg, tokenizer_path=tok_path, meta=meta, lora=lora, base=ckpt_dir)

    ft.save_best_and_last(ctx.dir / "ckpt", pv, result, save)  # the policy now holds the best weights
    judged = {f"ppo_{k}": v for k, v in final_judge(model, reference).items()}
    logger.info("judged on %d held-out prompts: %s", len(held), judged)
    return {
        **judged,
        **result.best_metrics,
        "score_before": result.initial_metrics["score"],
        "score_after": result.best_metrics["score"],
        "kl_after": result.best_metrics["kl"],
        "steps": result.steps,
        "best_step": result.best_step,
        "train_prompts": len(train),
        "select_prompts": len(select),
        "judged_prompts": len(held),
        "train_time_s": result.train_time_s,
    }
