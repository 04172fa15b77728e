"""Fine-tune a decoder on evaluation tasks' training splits (stage kind ``finetune.task``).

Each document of a task's training split (``Task.fewshot_pool``: SQuAD's training articles,
Multi30k's train file, MBPP's training problems, ...) becomes one example, rendered exactly as the
eval stage renders it zero-shot: the prompt ``build_prompt(doc.query, [], task.fmt)`` after
``<|bos|>``, then the target ``task.fmt.target_delimiter + doc.target + task.until[0]`` (the stop string
not repeated when the target already ends with it), tokenised as
the eval stage scores a continuation (``tasks.pair_ids``). The loss covers the target tokens only,
stop string included, so the model learns where to stop. Prompts too long for the context lose tokens
from the left; a target that does not fit is dropped and counted. Several tasks mix into one
training set. ``val_fraction`` of the examples is held out for the validation loss (early stopping
and the best checkpoint); the task's test documents (``Task.docs``) are never read.

The loop, packing, batches, and checkpoints are SFT's (``sft_loop.run_sft``); the result is a
normal checkpoint that ``eval``, ``generate`` and ``chat`` load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import StageContext, config_inputs, run_stage
from lmforge.training.options import FinetuneOptions

log = logging.getLogger(__name__)

STAGE = "finetune.task"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge finetune task``."""

    tasks: list[str] = opt([], "tasks whose training split to learn: built-in names or YAML task files")
    data_dir: str = opt("", "directory holding built-in task data (e.g. ../shared/data)", path=True)
    packing: Literal["pack", "pad"] = opt("pack", "pack whole examples into rows, or one per row")
    max_train_examples: int = opt(0, "use at most this many training examples per task (0 = all)")

    def validate(self) -> None:
        super().validate()
        from lmforge.eval.loaders import check_task_names

        if not self.tasks:
            raise ConfigError("tasks", "name at least one task (e.g. tasks=[squad])")
        check_task_names(self.tasks, self.data_dir)
        at_least(self, 0, "max_train_examples")


INPUTS = ("model",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Fine-tune (or return the cached result); returns the stage manifest."""
    inputs = config_inputs(cfg, *INPUTS)
    inputs.update({f"task_{i}": t for i, t in enumerate(cfg.tasks) if t.endswith((".yaml", ".yml"))})
    return run_stage(STAGE, cfg, out=cfg.out, inputs=inputs, work=work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """SFT's loop over task examples."""
    from lmforge.stages.finetune.sft_loop import run_sft  # imports torch: not at --help time

    def examples(cfg: Config, ctx: StageContext, tok: Any, block_size: int) -> tuple[list, list, dict]:
        from lmforge.eval.tasks import load_task

        names = [str(ctx.inputs.get(f"task_{i}", t)) for i, t in enumerate(cfg.tasks)]
        tasks = [load_task(n, data_dir=cfg.data_dir) for n in names]
        return task_examples(cfg, tasks, tok, block_size)

    return run_sft(cfg, ctx, examples=examples, method="task")


def task_examples(cfg: Any, tasks: list, tok: Any, block_size: int) -> tuple[list, list, dict]:
    """``(train, held out, counts)`` examples ``(ids, loss mask)`` from the tasks' training splits.

    Raises:
        ConfigError: a task without a training split, or no example fits ``block_size``.
    """
    from lmforge.data.supervised import holdout
    from lmforge.eval.fewshot import build_prompt
    from lmforge.eval.tasks import pair_ids
    from lmforge.tokenizer.train import special_id

    bos = special_id(tok, "<|bos|>")
    train: list = []
    val: list = []
    counts: dict[str, float] = {}
    for task in tasks:
        if not task.fewshot_pool:
            raise ConfigError(
                "tasks", f"task {task.name} has no training split (fewshot_pool) to fine-tune on"
            )
        docs = task.fewshot_pool
        if cfg.max_train_examples:
            docs = docs[: cfg.max_train_examples]
        stop = task.until[0] if task.until else ""
        encoded, dropped, cut = [], 0, 0
        for doc in docs:
            prompt = build_prompt(doc.query, [], task.fmt)
            target = doc.target if doc.target.endswith(stop) else doc.target + stop  # MBPP's ends [DONE]
            ctx_ids, cont = pair_ids(tok, bos, prompt, task.fmt.target_delimiter + target)
            if not cont or len(cont) >= block_size:
                dropped += 1
                continue
            ids = (ctx_ids + cont)[-(block_size + 1) :]
            cut += len(ctx_ids) + len(cont) > len(ids)
            encoded.append((ids, [0] * (len(ids) - len(cont)) + [1] * len(cont)))
        t, v = holdout(encoded, cfg.val_fraction or 0.1, cfg.seed)
        if cfg.max_eval_examples:
            v = v[: cfg.max_eval_examples]
        log.info(
            "task %s: %d training examples, %d held out, %d dropped (target longer than the context), "
            "%d prompts cut from the left",
            task.name,
            len(t),
            len(v),
            dropped,
            cut,
        )
        train += t
        val += v
        counts.update({f"{task.name}_train_examples": len(t), f"{task.name}_dropped": dropped})
    if not train or not val:
        raise ConfigError("tasks", f"no usable examples: {len(train)} for training, {len(val)} held out")
    counts.update({"train_examples": len(train), "val_examples": len(val)})
    return train, val, counts
