"""Fine-tune a sequence classifier (stage kind ``finetune.classify``) and compare it with bag-of-words.

A ``ClassificationHead`` goes on the checkpoint's trunk: decoders pool their last token (``<|eos|>``
after the text, the only position that has read all of it), encoders their ``[CLS]`` token (or the
mean); texts are cut to ``max_len`` tokens (0 = the model's block size), end marker kept.
Cross-entropy, averaged over examples, trains head and trunk (``freeze_trunk`` trains the
head alone: a linear probe). The best checkpoint by dev accuracy is kept. Metrics on the dev split:
accuracy, macro-F1, per-class precision/recall and the confusion matrix; the same split scores a
bag-of-words logistic regression trained on the same training examples (``bow_accuracy``), after the
classic preprocessing ``preprocess`` names (stop-word removal and/or lemmas, ``eval/classic_text.py``;
``none`` by default).

Transfer across tasks: ``model`` may be any fine-tuned checkpoint (an SFT model, another classifier:
its trunk is reused, its heads are not). ``compare_to`` names a second starting point (usually the
base model): the same classifier is trained from it with the same data, steps and seed, and the
report shows both, with ``transfer_gain`` = accuracy − ``compare_accuracy``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import TOKENIZER_FILE, StageContext, run_config, write_json_atomic
from lmforge.training.options import SequenceOptions

log = logging.getLogger(__name__)

STAGE = "finetune.classify"
VERSION = 1
TASK = "default"
PREPROCESS_NAMES = {
    "none": "",
    "stopwords": " (stop words removed)",
    "lemmas": " (lemmas)",
    "stopwords+lemmas": " (stop words removed, lemmas)",
}


@dataclass
class Config(SequenceOptions):
    """Options of ``lmforge finetune classify``."""

    train: str = opt(
        "", "training data: LABEL TEXT lines, or .jsonl / .csv / .tsv with text and label fields", path=True
    )
    dev: str = opt("", "evaluation data, same formats ('' = hold out val_fraction of train)", path=True)
    text_field: str = opt("text", "text field / column of .jsonl and .csv data")
    label_field: str = opt("label", "label field / column of .jsonl and .csv data")
    max_train_examples: int = opt(0, "use at most this many training examples (0 = all)")
    pooling: Literal["auto", "last", "cls", "mean"] = opt(
        "auto",
        "auto = the base's declared pooling (pooling.json of an import), else last token (decoder) or [CLS] (encoder)",
    )
    freeze_trunk: bool = opt(False, "train the head only (a linear probe of the trunk)")
    bow_baseline: bool = opt(True, "also train and score the bag-of-words logistic regression")
    preprocess: Literal["none", "stopwords", "lemmas", "stopwords+lemmas"] = opt(
        "none", "the bag-of-words baseline's preprocessing: stop words removed and/or words as lemmas"
    )
    compare_to: str = opt(
        "", "transfer: also train from this checkpoint and report the difference", path=True
    )

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError(
                "train", "a training file is required (e.g. --train data/sst2/stsa.binary.train)"
            )
        at_least(self, 0, "max_train_examples")
        if self.preprocess != "none" and not self.bow_baseline:
            raise ConfigError(
                "preprocess", f"{self.preprocess!r} prepares the bag-of-words baseline; bow_baseline is false"
            )


INPUTS = ("model", "compare_to", "train", "dev")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train the classifier (or return the cached result); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, train, version=VERSION, force=force)


def load_split(cfg: Any, path: str, problems: list) -> list:
    """Labelled examples of ``path`` with the config's text and label fields."""
    from lmforge.data.supervised import read_labeled

    return read_labeled(path, text_field=cfg.text_field, label_field=cfg.label_field, problems=problems)


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read the splits, fine-tune, score the best checkpoint and the baselines, write the report tables."""
    from lmforge.data.supervised import holdout, log_problems, sample_stratified, skipped
    from lmforge.eval.classification import (
        bow_baseline,
        classification_metrics,
        confusion_table,
        flat_metrics,
        per_class_table,
    )
    from lmforge.runtime import create_runtime
    from lmforge.training.finetune import restart

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    if cfg.bow_baseline:
        from lmforge.eval.classic_text import preprocessor

        preprocessor(cfg.preprocess)  # lemmas without simplemma fail now, not after fine-tuning
    problems: list = []
    restart(ctx)
    train_set = load_split(cfg, str(ctx.inputs["train"]), problems)
    if "dev" in ctx.inputs:
        dev_set = load_split(cfg, str(ctx.inputs["dev"]), problems)
    else:
        train_set, dev_set = holdout(train_set, cfg.val_fraction or 0.1, cfg.seed)
    train_set = sample_stratified(train_set, cfg.max_train_examples, cfg.seed, what="training examples")
    dev_set = sample_stratified(dev_set, cfg.max_eval_examples, cfg.seed, what="evaluation examples")
    labels = sorted({e.label for e in train_set})
    if len(labels) < 2:
        raise ConfigError("train", f"needs at least two labels, found {labels} in {len(train_set)} examples")
    unseen = [e for e in dev_set if e.label not in labels]
    if unseen:
        log.warning(
            "%d dev examples have labels never seen in training (e.g. %r); skipped",
            len(unseen),
            unseen[0].label,
        )
        dev_set = [e for e in dev_set if e.label in labels]
    if not dev_set:
        raise ConfigError("dev", "no evaluation examples (give --dev or a larger val_fraction)")
    log_problems(problems, "classification data")
    log.info("%d training and %d dev examples, labels %s", len(train_set), len(dev_set), labels)

    run = _fine_tune(cfg, ctx, ctx.inputs["model"], train_set, dev_set, labels, rt.device, save=True)
    result = classification_metrics([e.label for e in dev_set], run["predicted"], labels)
    metrics = {**flat_metrics(result), "val_loss": run["val_loss"]}
    tables = [
        {
            "title": "dev accuracy",
            "header": ["model", "accuracy", "macro_f1"],
            "rows": [["fine-tuned transformer", result["accuracy"], result["macro_f1"]]],
        },
        confusion_table(result),
        per_class_table(result),
    ]
    report: dict[str, Any] = {"labels": labels, "dev": result}
    if cfg.bow_baseline:
        bow = bow_baseline(
            [e.text for e in train_set],
            [e.label for e in train_set],
            [e.text for e in dev_set],
            [e.label for e in dev_set],
            labels=labels,
            seed=cfg.seed,
            preprocess=cfg.preprocess,
        )
        metrics.update(bow_accuracy=bow["accuracy"], bow_macro_f1=bow["macro_f1"])
        name = "bag-of-words logistic regression" + PREPROCESS_NAMES[cfg.preprocess]
        tables[0]["rows"].append([name, bow["accuracy"], bow["macro_f1"]])
        report["bow"] = {**bow, "preprocess": cfg.preprocess}
    if "compare_to" in ctx.inputs:
        other = _fine_tune(
            cfg, ctx, ctx.inputs["compare_to"], train_set, dev_set, labels, rt.device, save=False
        )
        compared = classification_metrics([e.label for e in dev_set], other["predicted"], labels)
        metrics.update(
            compare_accuracy=compared["accuracy"],
            compare_macro_f1=compared["macro_f1"],
            transfer_gain=result["accuracy"] - compared["accuracy"],
        )
        tables.append(
            {
                "title": "transfer: same classifier, two starting checkpoints",
                "header": ["start from", "accuracy", "macro_f1"],
                "rows": [
                    [f"model: {cfg.model}", result["accuracy"], result["macro_f1"]],
                    [f"compare_to: {cfg.compare_to}", compared["accuracy"], compared["macro_f1"]],
                ],
            }
        )
        report["compare"] = {"start": str(other["start"]), "dev": compared}
    write_json_atomic(ctx.dir / "classification.json", report)
    write_json_atomic(ctx.dir / "report.json", {"tables": tables})
    metrics.update(
        train_examples=len(train_set),
        skipped_records=skipped(problems),
        dev_examples=len(dev_set),
        **run["fit"].run_metrics(),
    )
    return metrics


def _fine_tune(
    cfg: Config,
    ctx: StageContext,
    start: Any,
    train_set: list,
    dev_set: list,
    labels: list[str],
    device: str,
    *,
    save: bool,
) -> dict[str, Any]:
    """Train a classifier from checkpoint ``start``; returns its dev predictions (as labels) and loss."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lmforge.tokenizer.texts import encode_texts, pad_batch
    from lmforge.tokenizer.train import load_tokenizer, special_id
    from lmforge.training import finetune as ft

    torch.manual_seed(cfg.seed)
    trunk, mcfg, ckpt_dir = ft.load_base(start, cfg.checkpoint, device=device, dropout=cfg.dropout)
    seq_len = ft.sequence_length(cfg.max_len, mcfg)
    tok_path = ckpt_dir / TOKENIZER_FILE
    tok = load_tokenizer(tok_path)
    pad_id = special_id(tok, "pad")
    pooling = ft.default_pooling(mcfg.arch, cfg.pooling, ckpt_dir)
    model = ft.TaskClassifier(trunk, {TASK: len(labels)}, pooling).to(device)
    if cfg.freeze_trunk:
        model.trunk.requires_grad_(False)
    index = {label: i for i, label in enumerate(labels)}
    x_train = encode_texts(tok, [e.text for e in train_set], mcfg.arch, seq_len)
    y_train = [index[e.label] for e in train_set]
    x_dev = encode_texts(tok, [e.text for e in dev_set], mcfg.arch, seq_len)
    y_dev = [index[e.label] for e in dev_set]
    rng = np.random.default_rng(cfg.seed)

    def next_batch() -> tuple[Any, int]:
        rows = rng.integers(0, len(x_train), size=cfg.batch_size)
        idx, mask = pad_batch([x_train[i] for i in rows], pad_id)
        return (
            idx.to(device),
            mask.to(device),
            torch.tensor([y_train[i] for i in rows], device=device),
        ), len(rows)

    def loss_sum(batch: Any) -> Any:
        idx, mask, y = batch
        return F.cross_entropy(model(idx, mask, TASK).float(), y, reduction="sum")

    def evaluate() -> dict[str, float]:
        predicted, loss = ft.predict_classes(
            model, x_dev, y_dev, TASK, pad_id=pad_id, batch_size=2 * cfg.batch_size, device=device
        )
        return {"val_loss": loss, "accuracy": float(np.mean(np.asarray(predicted) == np.asarray(y_dev)))}

    result = ft.fit(
        model,
        cfg,
        next_batch,
        loss_sum,
        evaluate,
        monitor="accuracy",
        log_metrics=ctx.log_metrics if save else None,
    )
    meta = {"method": "classify", "pooling": pooling, "labels": {TASK: labels}, "base": str(ckpt_dir)}
    if save:
        ft.save_with_heads(ctx.dir / "ckpt", model, result, mcfg, tokenizer_path=tok_path, meta=meta)
    else:
        ft.restore(model, result.best_state)
    predicted, val_loss = ft.predict_classes(model, x_dev, y_dev, TASK, pad_id=pad_id, device=device)
    return {
        "predicted": [labels[p] for p in predicted],
        "val_loss": val_loss,
        "fit": result,
        "start": ckpt_dir,
    }
