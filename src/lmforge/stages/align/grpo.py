"""GRPO with verifiable rewards (stage kind ``align.grpo``).

Group relative policy optimisation (Shao et al. 2024): for each prompt the policy samples a group of
``group_size`` completions through the inference engine; each is scored by plain reward functions
(``training.rewards.correctness_reward``: the number after ``####`` or the last number equals the
answer; plus ``format_weight`` × ``format_reward``); advantages are the rewards normalised within the
group; the loss is PPO's clipped surrogate on the completion tokens plus ``beta`` × a KL estimate to the
frozen reference (LoRA disabled, or a frozen copy). Each rollout is reused for ``updates_per_rollout``
optimiser steps (with 1 the ratio is 1 and the clip inactive, as in the paper's default).
``scale_rewards: false`` is Dr. GRPO's centred advantage; ``dynamic_sampling: N`` is DAPO's filter of
the groups whose rewards are all equal, refilled from up to N rounds of sampling (``training.rollouts``).

Problems: ``problems`` (JSONL ``{"question", "answer"}``, GSM8K's ``#### N`` answers work as they are)
held out by ``eval_problems`` (a JSONL file of the same shape, e.g. ``align.arithmetic``'s
``heldout.jsonl``) or else by ``val_fraction`` of the distinct questions; or, by default, generated
arithmetic (``digits``, ``min_digits``, ``ops``; the first ``n_eval`` distinct questions are held out,
at most half of those drawn). Whichever way, every training problem whose question text is held out
is removed (``training.rewards.split_heldout``). The prompt is the question as a user turn of the chat template.
Held-out problems are solved greedily before, during and after training: ``accuracy`` (exact match).
``grpo_accuracy_before`` is the starting policy's, ``grpo_accuracy_after`` the final policy's (the
last evaluation, not the best one: choosing the best on the held-out set would flatter it), each with
its binomial standard error ``sqrt(p(1-p)/n)``; ``grpo_accuracy_gain_se`` is the paired standard error
of their difference over the same ``eval_problems`` problems. ``metrics.jsonl`` has every rollout's
``{"step", "reward", "kl"}`` (mean reward; mean per-token k3 KL of the sampling policy to the
reference, when there is one) beside the evaluations.

Code rewards: with ``task`` (a code task, ``eval/tasks.py``: ``mbpp``, ``humaneval`` or a YAML file of
kind ``code``; data under ``data_dir``) the problems are the task's TRAINING split
(``Task.fewshot_pool``; ``val_fraction`` of it held out, at most ``n_eval``), never its test problems;
the prompt is the one the eval stage gives the problem zero-shot (``<|bos|>`` then the prompt, no
chat template); completions stop at the task's stop strings; the reward is ``eval.codegen.code_reward``
(1.0 when the problem's program with this completion passes its tests in the sandbox, else 0.0:
failed, timed out or refused), and ``accuracy`` is the held-out problems' greedy pass@1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, at_least, opt, retuned
from lmforge.eval.sandbox import require_sandbox
from lmforge.runstore import StageContext, config_inputs, run_stage
from lmforge.training.options import FinetuneOptions

logger = logging.getLogger(__name__)

STAGE = "align.grpo"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge align grpo``."""

    problems: str = opt("", "JSONL {question, answer} problems ('' = generated arithmetic)", path=True)
    eval_problems: str = opt(
        "", "JSONL {question, answer} held-out problems ('' = hold out val_fraction of problems)", path=True
    )
    task: str = opt(
        "",
        "code task (mbpp, humaneval or a YAML file) to train on: reward 1 when its tests pass in the sandbox",
    )
    data_dir: str = opt(
        "", "with task: directory holding built-in task data (e.g. ../shared/data)", path=True
    )
    unsafe_exec: bool = opt(
        False,
        "with task: run the policy's programs WITHOUT the sandbox (resource limits only), where"
        " bubblewrap is unusable; only for code you trust (docs/security.md)",
        cache=False,
    )
    n_problems: int = opt(500, "generated problems for training (with problems: '' only)")
    n_eval: int = opt(100, "held-out problems solved greedily at each evaluation")
    digits: int = opt(1, "generated arithmetic: digits per operand (at most)")
    min_digits: int = opt(0, "generated arithmetic: fewest digits per operand (0 = digits)")
    ops: str = opt("+", "generated arithmetic: operators drawn from these characters (+-*)")
    batch_size: int = opt(4, "prompts per micro-batch (each sampled group_size times)")
    group_size: int = opt(8, "completions sampled per prompt (the GRPO group)")
    max_new_tokens: int = opt(8, "tokens per completion at most")
    temperature: float = opt(1.0, "sampling temperature of the rollouts")
    beta: float = opt(0.04, "weight of the KL penalty to the reference (0 = none, no reference kept)")
    clip_eps: float = opt(0.2, "PPO clip range ε of the probability ratio")
    scale_rewards: bool = opt(
        True, "divide each group's centred rewards by their std (False = Dr. GRPO: centred only)"
    )
    dynamic_sampling: int = opt(
        0,
        "DAPO's dynamic sampling: draw up to this many rounds of batch_size prompts per micro-batch and"
        " train only on groups whose rewards differ, at most batch_size of them (0 = off: every group)",
    )
    updates_per_rollout: int = opt(1, "optimiser steps on each rollout (μ)")
    format_weight: float = opt(0.0, "reward added for stating the answer as '#### N'")
    lr: float = retuned(FinetuneOptions, "lr", 1e-4)
    warmup_steps: int = retuned(FinetuneOptions, "warmup_steps", 0)
    weight_decay: float = retuned(FinetuneOptions, "weight_decay", 0.0)
    eval_every: int = opt(20, "evaluate on the held-out problems every N steps (and at the end)")
    lora_r: int = opt(0, "train LoRA adapters of this rank instead of every weight (0 = full model)")
    lora_alpha: float = opt(16.0, "LoRA scale numerator (update = alpha / r · B A)")

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "n_problems", "n_eval", "digits", "max_new_tokens", "updates_per_rollout")
        if self.group_size < 2:
            raise ConfigError(
                "group_size", f"must be >= 2 (advantages compare a group), got {self.group_size}"
            )
        if not 0 <= self.min_digits <= self.digits:
            raise ConfigError("min_digits", f"must be in 0..digits ({self.digits}), got {self.min_digits}")
        if self.eval_problems and not self.problems:
            raise ConfigError("eval_problems", "holds out problems of a problems file; set problems too")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ConfigError("ops", f"operators from '+-*', got {self.ops!r}")
        at_least(self, 0, "temperature", "beta", "clip_eps", "format_weight", "lora_r", "dynamic_sampling")
        if self.temperature == 0:
            raise ConfigError("temperature", "must be > 0: a group of greedy samples is all alike")
        if self.task:
            self._validate_task()

    def _validate_task(self) -> None:
        from lmforge.eval.loaders import BUILTIN, check_task_names

        if self.problems:
            raise ConfigError("task", "train on a code task or on problems, not both")
        if self.format_weight:
            raise ConfigError(
                "format_weight", "the '#### N' format reward is for arithmetic; a code task has none"
            )
        if not self.task.endswith((".yaml", ".yml")):
            if self.task not in BUILTIN or BUILTIN[self.task].kind != "code":
                code = ", ".join(n for n, b in BUILTIN.items() if b.kind == "code")
                raise ConfigError(
                    "task", f"{self.task!r} is not a code task; built-in: {code}, or a .yaml file"
                )
            check_task_names([self.task], self.data_dir)  # data_dir
        require_sandbox(self.unsafe_exec)  # no usable sandbox: refused before any work


INPUTS = ("model", "problems", "eval_problems")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train with GRPO (or return the cached result); returns the stage manifest."""
    found = config_inputs(cfg, *INPUTS)
    if cfg.task.endswith((".yaml", ".yml")):
        found["task"] = cfg.task
    return run_stage(STAGE, cfg, out=cfg.out, inputs=found, work=work, version=VERSION, force=force)


def load_problems(
    cfg: Config, path: Any, eval_path: Any = None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(training, held-out)`` problems: from ``path`` (JSONL; held out by ``eval_path`` or by
    ``val_fraction`` of its distinct questions) or generated. No training problem's question is a
    held-out question."""
    from lmforge.data.supervised import holdout
    from lmforge.training.rewards import arithmetic_problems, split_heldout

    if path is None:
        both = arithmetic_problems(
            cfg.n_problems + cfg.n_eval,
            digits=cfg.digits,
            ops=cfg.ops,
            seed=cfg.seed,
            min_digits=cfg.min_digits or None,
        )
        distinct = len({p["question"] for p in both})
        return split_heldout(both, min(cfg.n_eval, distinct // 2))  # at most half: leave some to train on
    found = read_problems(path)
    if eval_path is not None:
        held = read_problems(eval_path)[: cfg.n_eval]
    else:  # hold out whole questions: a question drawn twice must not land on both sides
        _, held_questions = holdout(sorted({p["question"] for p in found}), cfg.val_fraction or 0.1, cfg.seed)
        keep = set(held_questions)
        held = list({p["question"]: p for p in found if p["question"] in keep}.values())[: cfg.n_eval]
    seen = {p["question"] for p in held}
    train = [p for p in found if p["question"] not in seen]
    if len(train) < len(found):
        logger.info("%d training problems removed: their questions are held out", len(found) - len(train))
    return train, held


def read_problems(path: Any) -> list[dict[str, str]]:
    """The ``{"question", "answer"}`` records of a JSONL file; others are reported and skipped."""
    from lmforge.data.readers import skip
    from lmforge.data.supervised import _json_records, log_problems
    from lmforge.training.rewards import extract_answer

    problems: list = []
    found = []
    for number, record in _json_records(path, problems):
        q, a = record.get("question"), record.get("answer")
        if not isinstance(q, str) or not isinstance(a, (str, int, float)) or extract_answer(str(a)) is None:
            skip(problems, str(path), number, "needs 'question' and a numeric 'answer'")
            continue
        found.append({"question": q, "answer": str(a)})
    log_problems(problems, "problems")
    return found


def load_code_problems(cfg: Config) -> tuple[Any, list[Any], list[Any]]:
    """``(task, training problems, held-out problems)`` of the code task ``cfg.task``: both from its
    training split, ``val_fraction`` (default 0.1) of it held out, at most ``n_eval``.

    Raises:
        ConfigError: not a code task, or it has no training split.
    """
    from lmforge.data.supervised import holdout
    from lmforge.eval.tasks import load_task

    task = load_task(cfg.task, data_dir=cfg.data_dir)
    if task.kind != "code":
        raise ConfigError("task", f"task {task.name} is a {task.kind} task, not code")
    if not task.fewshot_pool:
        raise ConfigError(
            "task",
            f"task {task.name} has no training split (fewshot_pool) to train on; its test problems are not used",
        )
    train, held = holdout(task.fewshot_pool, cfg.val_fraction or 0.1, cfg.seed)
    return task, train, held[: cfg.n_eval]


def accuracy_change(before: list[float], after: list[float]) -> dict[str, float]:
    """Held-out accuracy of the starting and the final policy on the same ``n`` problems (per-problem
    scores 1.0/0.0), each with its binomial standard error ``sqrt(p(1-p)/n)``, and the paired standard
    error of the gain ``std(after_i - before_i) / sqrt(n)`` (population std)."""
    n = len(before)
    if n == 0 or len(after) != n:
        raise ValueError(f"need the same non-empty problems before and after, got {n} and {len(after)}")
    p0, p1 = sum(before) / n, sum(after) / n
    diffs = [a - b for a, b in zip(after, before)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / n
    return {
        "grpo_accuracy_before": p0,
        "grpo_accuracy_after": p1,
        "grpo_accuracy_before_se": (p0 * (1 - p0) / n) ** 0.5,
        "grpo_accuracy_after_se": (p1 * (1 - p1) / n) ** 0.5,
        "grpo_accuracy_gain_se": (var / n) ** 0.5,
    }


def code_scorer(task: Any, *, unsafe_exec: bool = False) -> Any:
    """The reward of a completion of a problem of the code ``task``: ``(doc, text) -> 1.0 | 0.0``."""
    from lmforge.eval.codegen import code_reward

    def reward(doc: Any, text: str) -> float:
        return code_reward(doc, text, until=task.until, limits=task.limits, unsafe_exec=unsafe_exec)

    return reward


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Rollouts and updates through ``finetune.fit``; greedy accuracy on held-out problems."""
    from pathlib import Path

    import numpy as np
    import torch

    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams
    from lmforge.model.lora import lora_policy
    from lmforge.tokenizer.chat import render_chat
    from lmforge.tokenizer.train import special_id
    from lmforge.training import finetune as ft
    from lmforge.training.logprobs import Reference
    from lmforge.training.losses import kl_k3
    from lmforge.training.rewards import correctness_reward, format_reward
    from lmforge.training.rollouts import grpo_loss_sum, informative_groups, keep_groups, rollout

    rt, model, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx, "GRPO")
    pad_id, end_id = special_id(tok, "pad"), special_id(tok, "end")
    if cfg.task:
        task, train, held = load_code_problems(cfg)
    else:
        train, held = load_problems(cfg, ctx.inputs.get("problems"), ctx.inputs.get("eval_problems"))
    if not train or not held:
        raise ConfigError(
            "problems", f"need problems to train on and to hold out, got {len(train)} and {len(held)}"
        )
    logger.info("%d training problems, %d held out", len(train), len(held))
    lora = lora_policy(model, cfg.lora_r, cfg.lora_alpha)
    reference = Reference(model) if cfg.beta > 0 else None
    engine = Engine(model, tok)

    stops: dict[str, Any] = {"stop_ids": frozenset({end_id})}
    if cfg.task:  # the eval stage's zero-shot prompt, stop strings and judgement
        from lmforge.eval.fewshot import build_prompt
        from lmforge.inference.rows import default_stop_ids

        bos_id = special_id(tok, "<|bos|>")
        stops = {"stop": list(task.until), "stop_ids": default_stop_ids(tok)}
        judge = code_scorer(task, unsafe_exec=cfg.unsafe_exec)

        def prompt(problem: Any) -> list[int]:
            text = build_prompt(problem.query, [], task.fmt)
            return [bos_id] + tok.encode(text, add_special_tokens=False).ids

        score = judge
    else:

        def prompt(problem: Any) -> list[int]:
            return render_chat(
                tok, [{"role": "user", "content": problem["question"]}], add_generation_prompt=True
            )[0]

        def judge(problem: Any, text: str) -> float:
            return correctness_reward(text, problem["answer"])

        def score(problem: Any, text: str) -> float:
            return judge(problem, text) + cfg.format_weight * format_reward(text)

    rng = np.random.default_rng(cfg.seed)
    buffer: list = []
    state: dict[str, Any] = {"calls": 0, "reward": [], "kl": [], "solved": []}

    def next_batch() -> tuple[Any, int]:
        calls = state["calls"]
        state["calls"] += 1
        slot = calls % cfg.grad_accum
        if calls % (cfg.grad_accum * cfg.updates_per_rollout) >= cfg.grad_accum:
            return buffer[slot], int(buffer[slot].m.sum())  # reuse this micro-batch's rollout (μ > 1)
        rounds = []
        for r in range(max(1, cfg.dynamic_sampling)):
            chosen = [train[i] for i in rng.integers(0, len(train), size=cfg.batch_size)]
            params = SamplingParams(
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                seed=cfg.seed + 1000 * calls + r,
                **stops,
            )
            rounds.append(
                rollout(
                    engine,
                    [prompt(p) for p in chosen],
                    lambda i, c, chosen=chosen: score(chosen[i], c.text),
                    group_size=cfg.group_size,
                    params=params,
                    pad_id=pad_id,
                    reference=reference,
                    scale_rewards=cfg.scale_rewards,
                )
            )
            if (
                not cfg.dynamic_sampling
                or sum(int(informative_groups(x.rewards).sum()) for x in rounds) >= cfg.batch_size
            ):
                break
        ro = rounds[0]
        if cfg.dynamic_sampling:  # no informative group at all: train on the first round (zero advantage)
            ro = keep_groups(rounds, cfg.group_size, cfg.batch_size) or ro
        state["reward"].append(float(rounds[0].rewards.mean()))  # the first round: an unfiltered sample
        row = {"step": calls // cfg.grad_accum + 1, "reward": state["reward"][-1]}
        if cfg.dynamic_sampling:
            row.update(groups=len(ro.rewards), rounds=len(rounds))
        if ro.ref_logp is not None:  # the sampling policy's KL to the reference over the rollout
            row["kl"] = float((kl_k3(ro.old_logp, ro.ref_logp) * ro.m).sum() / ro.m.sum().clamp(min=1))
        ctx.log_metrics(row)
        buffer[slot:] = [ro]
        return ro, int(ro.m.sum())

    def loss_sum(ro: Any) -> torch.Tensor:
        loss, kl = grpo_loss_sum(model, ro, clip_eps=cfg.clip_eps, beta=cfg.beta)
        state["kl"].append(kl)
        return loss

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        greedy = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0, **stops)
        done = engine.generate([prompt(p) for p in held], greedy)
        solved = [judge(p, c.text) for p, c in zip(held, done)]  # per held-out problem, 1.0 or 0.0
        state["solved"].append(solved)
        out = {"accuracy": sum(solved) / len(held)}
        if not cfg.task:
            out["format"] = sum(format_reward(c.text) for c in done) / len(held)
        return out

    result = ft.fit(
        model,
        cfg,
        next_batch=next_batch,
        loss_sum=loss_sum,
        evaluate=evaluate,
        monitor="accuracy",
        log_metrics=ctx.log_metrics,
    )

    def save(d: Path) -> None:
        meta = {"method": "grpo", "base": str(ckpt_dir)}
        ft.save_policy(d, model, mcfg, tokenizer_path=tok_path, meta=meta, lora=lora, base=ckpt_dir)

    ft.save_best_and_last(ctx.dir / "ckpt", model, result, save)
    rewards, kls = state["reward"], state["kl"]
    tail = max(1, len(rewards) // 4)
    before, after = state["solved"][0], state["solved"][-1]  # the starting and the final policy
    return {
        **result.last_metrics,  # the final policy's evaluation (accuracy, format)
        **accuracy_change(before, after),
        "best_accuracy": result.best_metrics["accuracy"],
        "reward_first": sum(rewards[:tail]) / tail,
        "reward_last": sum(rewards[-tail:]) / tail,
        "kl_last": kls[-1] if kls else 0.0,
        "steps": result.steps,
        "best_step": result.best_step,
        "train_problems": len(train),
        "eval_problems": len(held),
        "train_time_s": result.train_time_s,
    }
