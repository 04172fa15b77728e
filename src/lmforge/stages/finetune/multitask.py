"""Multi-task fine-tuning: one shared trunk, one classification head per task (``finetune.multitask``).

Every batch mixes tasks: each of its rows is drawn from a task chosen with probability proportional
to the task's ``weight``, the trunk runs once over the whole batch and each row goes through its own
task's head (hard parameter sharing, Caruana 1997). The loss is the mean cross-entropy over the rows.
Texts are cut to ``max_len`` tokens (0 = the model's block size), end marker kept.
The best checkpoint maximises the mean dev accuracy over tasks; per-task accuracy, macro-F1 and the
bag-of-words baseline of each task are reported.

Recipe form::

    multitask:
      stage: finetune.multitask
      tasks:
        sst2: {train: data/sst2/stsa.binary.train, dev: data/sst2/stsa.binary.dev}
        subj: {train: data/subj/subj.all, weight: 0.5}
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, above, at_least, opt
from lmforge.runstore import StageContext, config_inputs, run_stage, write_json_atomic
from lmforge.training.options import SequenceOptions

log = logging.getLogger(__name__)

STAGE = "finetune.multitask"
VERSION = 1


@dataclass
class TaskSpec:
    """One task of a multi-task run."""

    train: str = opt("", "training data (formats as finetune classify)", path=True)
    dev: str = opt("", "evaluation data ('' = hold out val_fraction of train)", path=True)
    text_field: str = opt("text", "text field / column of .jsonl and .csv data")
    label_field: str = opt("label", "label field / column of .jsonl and .csv data")
    weight: float = opt(1.0, "sampling weight: the share of rows drawn from this task")
    max_train_examples: int = opt(0, "use at most this many training examples (0 = all)")

    def validate(self) -> None:
        if not self.train:
            raise ConfigError("train", "a training file is required")
        above(self, 0, "weight")
        at_least(self, 0, "max_train_examples")


@dataclass
class Config(SequenceOptions):
    """Options of ``lmforge finetune multitask``."""

    tasks: dict[str, TaskSpec] = opt({}, "task name → {train, dev, text_field, label_field, weight}")
    pooling: Literal["auto", "last", "cls", "mean"] = opt(
        "auto",
        "auto = the base's declared pooling (pooling.json of an import), else last token (decoder) or [CLS] (encoder)",
    )
    bow_baseline: bool = opt(True, "also train and score a bag-of-words baseline per task")

    def validate(self) -> None:
        super().validate()
        if len(self.tasks) < 1:
            raise ConfigError("tasks", "name at least one task: tasks: {name: {train: FILE}}")
        for name in self.tasks:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ConfigError(f"tasks.{name}", "task names may hold letters, digits, '_' and '-' only")


INPUTS = ("model",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train the multi-task model (or return the cached result); returns the stage manifest."""
    inputs = config_inputs(cfg, *INPUTS)
    for name, spec in cfg.tasks.items():
        inputs[f"{name}.train"] = spec.train
        if spec.dev:
            inputs[f"{name}.dev"] = spec.dev
    return run_stage(STAGE, cfg, out=cfg.out, inputs=inputs, work=train, version=VERSION, force=force)


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read every task, train the shared model, score each task and its baseline."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lmforge.data.supervised import holdout, log_problems, read_labeled, sample_stratified, skipped
    from lmforge.eval.classification import bow_baseline, classification_metrics, confusion_table
    from lmforge.tokenizer.texts import encode_texts, pad_batch
    from lmforge.tokenizer.train import special_id
    from lmforge.training import finetune as ft

    rt, trunk, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx)
    device = rt.device
    seq_len = ft.sequence_length(cfg.max_len, mcfg)
    pad_id = special_id(tok, "pad")
    problems: list = []
    data: dict[str, dict[str, Any]] = {}
    for name, spec in cfg.tasks.items():
        read = lambda key, s=spec: read_labeled(  # noqa: E731
            ctx.inputs[key], text_field=s.text_field, label_field=s.label_field, problems=problems
        )
        train_set = read(f"{name}.train")
        if f"{name}.dev" in ctx.inputs:
            dev_set = read(f"{name}.dev")
        else:
            train_set, dev_set = holdout(train_set, cfg.val_fraction or 0.1, cfg.seed)
        train_set = sample_stratified(train_set, spec.max_train_examples, cfg.seed, what=f"{name} training")
        dev_set = sample_stratified(dev_set, cfg.max_eval_examples, cfg.seed, what=f"{name} evaluation")
        labels = sorted({e.label for e in train_set})
        dev_set = [e for e in dev_set if e.label in labels]
        if len(labels) < 2 or not dev_set:
            raise ConfigError(f"tasks.{name}", f"needs two or more labels and dev examples, got {labels}")
        index = {label: i for i, label in enumerate(labels)}
        data[name] = {
            "labels": labels,
            "train": train_set,
            "dev": dev_set,
            "x": encode_texts(tok, [e.text for e in train_set], mcfg.arch, seq_len),
            "y": [index[e.label] for e in train_set],
            "x_dev": encode_texts(tok, [e.text for e in dev_set], mcfg.arch, seq_len),
            "y_dev": [index[e.label] for e in dev_set],
        }
        log.info("task %s: %d train, %d dev, labels %s", name, len(train_set), len(dev_set), labels)
    log_problems(problems, "multi-task data")
    names = list(cfg.tasks)
    weights = np.array([cfg.tasks[n].weight for n in names], dtype=np.float64)
    weights /= weights.sum()
    torch.manual_seed(cfg.seed)
    pooling = ft.default_pooling(mcfg.arch, cfg.pooling, ckpt_dir)
    model = ft.TaskClassifier(trunk, {n: len(data[n]["labels"]) for n in names}, pooling).to(device)
    rng = np.random.default_rng(cfg.seed)

    def next_batch() -> tuple[Any, int]:
        tasks = [names[i] for i in rng.choice(len(names), size=cfg.batch_size, p=weights)]
        rows = [int(rng.integers(0, len(data[t]["x"]))) for t in tasks]
        idx, mask = pad_batch([data[t]["x"][r] for t, r in zip(tasks, rows)], pad_id)
        y = torch.tensor([data[t]["y"][r] for t, r in zip(tasks, rows)], device=device)
        return (idx.to(device), mask.to(device), tasks, y), len(tasks)

    def loss_sum(batch: Any) -> torch.Tensor:
        idx, mask, tasks, y = batch
        routed = model.forward_routed(idx, mask, tasks)
        return sum(
            F.cross_entropy(logits.float(), y[rows], reduction="sum") for rows, logits in routed.values()
        )

    def predictions(name: str) -> tuple[list[int], float]:
        d = data[name]
        return ft.predict_classes(
            model, d["x_dev"], d["y_dev"], name, pad_id=pad_id, batch_size=2 * cfg.batch_size, device=device
        )

    def evaluate() -> dict[str, float]:
        out = {}
        for name in names:
            predicted, loss = predictions(name)
            out[f"{name}_accuracy"] = float(np.mean(np.asarray(predicted) == np.asarray(data[name]["y_dev"])))
            out[f"{name}_val_loss"] = loss
        out["mean_accuracy"] = float(np.mean([out[f"{n}_accuracy"] for n in names]))
        return out

    result = ft.fit(
        model,
        cfg,
        next_batch,
        loss_sum,
        evaluate,
        monitor="mean_accuracy",
        log_metrics=ctx.log_metrics,
    )
    meta = {
        "method": "multitask",
        "pooling": pooling,
        "labels": {n: data[n]["labels"] for n in names},
        "base": str(ckpt_dir),
    }
    ft.save_with_heads(ctx.dir / "ckpt", model, result, mcfg, tokenizer_path=tok_path, meta=meta)
    metrics: dict[str, float] = {}
    rows, tables, report = [], [], {}
    for name in names:
        d = data[name]
        predicted, _ = predictions(name)
        r = classification_metrics(
            [e.label for e in d["dev"]], [d["labels"][p] for p in predicted], d["labels"]
        )
        metrics[f"{name}_accuracy"], metrics[f"{name}_macro_f1"] = r["accuracy"], r["macro_f1"]
        row = [name, cfg.tasks[name].weight, len(d["train"]), len(d["dev"]), r["accuracy"], r["macro_f1"]]
        report[name] = {"dev": r}
        if cfg.bow_baseline:
            bow = bow_baseline(
                [e.text for e in d["train"]],
                [e.label for e in d["train"]],
                [e.text for e in d["dev"]],
                [e.label for e in d["dev"]],
                labels=d["labels"],
                seed=cfg.seed,
            )
            metrics[f"{name}_bow_accuracy"] = bow["accuracy"]
            report[name]["bow"] = bow
            row.append(bow["accuracy"])
        rows.append(row)
        tables.append(
            {**confusion_table(r), "title": f"{name}: confusion matrix (rows: true, columns: predicted)"}
        )
    header = ["task", "weight", "train", "dev", "accuracy", "macro_f1"] + ["bow_accuracy"] * cfg.bow_baseline
    tables.insert(0, {"title": "per-task dev scores", "header": header, "rows": rows})
    write_json_atomic(ctx.dir / "classification.json", report)
    write_json_atomic(ctx.dir / "report.json", {"tables": tables})
    metrics["mean_accuracy"] = float(np.mean([metrics[f"{n}_accuracy"] for n in names]))
    metrics.update(skipped_records=skipped(problems), **result.run_metrics())
    return metrics
