"""Extractive question answering with a span head on an encoder (stage kind ``finetune.qa``).

BERT's SQuAD fine-tuning (Devlin et al. 2019, §4.2): ``model.heads.SpanHead`` (a linear layer D→2)
on the encoder's final hidden states gives a start and an end logit per token; the loss is the mean of
the cross-entropies of the gold start and end; the answer is the best valid span over sliding windows
of the context, mapped back to the context's characters. Windows, loss and span search are
``training/qa_spans.py``: ``[CLS] question [SEP] context chunk [SEP]`` windows of ``max_len`` tokens,
overlapping by ``doc_stride`` context tokens, with token types 0/1 (as Hugging Face's ``run_qa.py``);
a window without the answer trains both pointers on ``[CLS]``, which is never predicted.

Data: SQuAD v1.1 (Rajpurkar et al. 2016), ``data_dir/squad-v1.1/dev-v1.1.json.zip``, split exactly as
the eval task ``squad`` is (``eval.loaders_qa.squad_articles``: by article, the last quarter of the
articles the test split): fine-tuning reads the train split only, ``val_fraction`` of its articles
held out (whole articles, so no passage is on both sides) to choose the best step by F1 and for early
stopping; the test split is read once, at the end, and scored with the SQuAD v1.1 EM and F1 of
``eval.metrics`` (best over a question's answers), as are SQuAD's sliding-window baseline's answers to
the same questions (``baseline_sliding_window_test_*``; ``eval.classic.qa``, its one setting fitted on
the training questions). A training question learns its first answer; one
whose ``answer_start`` does not point at its text is not trained on (``mismatched_answers``).

An encoder is required: a decoder base is refused before the stage starts (a causal model's token
sees nothing to its right, so it cannot tell where an answer ends). Outputs: ``predictions.jsonl`` (one
line per test question: prediction, its character offsets in the context, references, EM and F1),
``report.json`` and the checkpoints (``heads.safetensors`` with the span head, ``finetune.json``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import TOKENIZER_FILE, StageContext, run_stage, write_json_atomic
from lmforge.training.options import FinetuneOptions

if TYPE_CHECKING:  # torch stays unimported until the stage runs (fast --help)
    from lmforge.training.qa_spans import QAExample, Span, Window

log = logging.getLogger(__name__)

STAGE = "finetune.qa"
VERSION = 1
TASK = "qa"
SQUAD_FILE = "squad-v1.1/dev-v1.1.json.zip"  # under data_dir, as the eval task ``squad`` reads it


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge finetune qa``."""

    data_dir: str = opt(
        "../shared/data", f"directory holding {SQUAD_FILE} (SQuAD v1.1 json, split by article)", path=True
    )
    max_len: int = opt(256, "tokens per window: [CLS] question [SEP] context chunk [SEP]")
    doc_stride: int = opt(128, "context tokens shared by consecutive windows of a long context")
    max_answer_tokens: int = opt(30, "longest answer predicted, in tokens")
    max_train_examples: int = opt(0, "train on at most this many questions (0 = all)")
    max_test_examples: int = opt(0, "score at most this many test questions (0 = all)")
    sliding_window_baseline: bool = opt(
        True, "also score SQuAD's sliding-window baseline (eval/classic/qa.py) on the same test questions"
    )

    def validate(self) -> None:
        super().validate()
        from lmforge.training.qa_spans import check_windows

        at_least(self, 0, "max_train_examples", "max_test_examples")
        at_least(self, 1, "max_answer_tokens")
        try:
            check_windows(self.max_len, self.doc_stride)
        except ValueError as e:
            raise ConfigError("max_len" if self.max_len < 8 else "doc_stride", str(e)) from None


INPUTS = ("model",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Fine-tune the span head (or return the cached result); returns the stage manifest.

    Raises:
        ConfigError: no ``out``; the base checkpoint is not an encoder, or its context is shorter
            than ``max_len`` (both checked before the stage starts).
    """
    check_base(cfg)
    inputs = {"model": cfg.model, "data": str(Path(cfg.data_dir) / SQUAD_FILE)}
    return run_stage(STAGE, cfg, out=cfg.out, inputs=inputs, work=train, version=VERSION, force=force)


def check_base(cfg: Config) -> None:
    """Refuse a decoder base, or a ``max_len`` past its context, from its config alone (no weights
    read, nothing written). A base that cannot be found yet is left for ``run_stage`` to report."""
    from lmforge.training.finetune import base_config  # imports torch: not at --help time

    found = base_config(cfg.model, cfg.out, cfg.checkpoint)
    if found is None:
        return
    ckpt_dir, mcfg = found
    if mcfg.arch != "encoder":
        raise ConfigError(
            "model",
            f"finetune qa needs an encoder checkpoint (e.g. pretrain objective=mlm, or an imported BERT); "
            f"{ckpt_dir} is a {mcfg.arch}, whose tokens cannot see the context to their right",
        )
    if cfg.max_len > mcfg.block_size:
        raise ConfigError(
            "max_len", f"{cfg.max_len} tokens exceed the base model's block_size {mcfg.block_size}"
        )


# --------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Question:
    """A SQuAD question: its id, article title, the example the model reads and every given answer."""

    id: str
    title: str
    example: QAExample
    references: list[str]


def read_questions(articles: list[dict]) -> tuple[list[Question], int]:
    """``(questions, mismatched)``: every question of the articles; the gold span is the first answer
    at its ``answer_start``, or none (-1) when the context does not hold the answer text there."""
    from lmforge.training.qa_spans import QAExample

    out, mismatched = [], 0
    for article in articles:
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                answers = qa.get("answers") or []
                a, b = -1, -1
                if answers:
                    a = int(answers[0].get("answer_start", -1))
                    b = a + len(answers[0]["text"])
                    if a < 0 or context[a:b] != answers[0]["text"]:
                        mismatched += 1
                        a, b = -1, -1
                example = QAExample(qa["question"].strip(), context, a, b)
                refs = list(dict.fromkeys(x["text"] for x in answers))
                out.append(Question(str(qa.get("id", "")), article["title"], example, refs))
    return out, mismatched


def _splits(cfg: Config, path: Path) -> tuple[list[Question], list[Question], list[Question], int]:
    """``(train, dev, test, mismatched)``: train and dev from the split's train articles, test from its test
    articles; unanswerable or unscorable questions dropped."""
    from lmforge.data.supervised import holdout
    from lmforge.eval.loaders_qa import squad_articles

    train_articles, dev_articles = holdout(squad_articles(path, "train"), cfg.val_fraction or 0.1, cfg.seed)
    train, mismatched = read_questions(train_articles)
    train = [q for q in train if q.example.answer_start >= 0][: cfg.max_train_examples or None]
    dev = [q for q in read_questions(dev_articles)[0] if q.references][: cfg.max_eval_examples or None]
    test = [q for q in read_questions(squad_articles(path, "test"))[0] if q.references]
    test = test[: cfg.max_test_examples or None]
    if not train or not dev:
        raise ConfigError(
            "data_dir", f"{path}: {len(train)} training and {len(dev)} held-out questions; need both"
        )
    return train, dev, test, mismatched


# --------------------------------------------------------------------------------------------------
# the stage


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read the split, fine-tune, answer the test questions, write predictions and the report."""
    from lmforge.eval.metrics import exact_match, squad_f1
    from lmforge.runtime import create_runtime
    from lmforge.training.finetune import restart

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    restart(ctx)
    train_q, dev_q, test_q, mismatched = _splits(cfg, Path(ctx.inputs["data"]))
    log.info("%d training, %d held-out, %d test questions", len(train_q), len(dev_q), len(test_q))
    run = _fine_tune(cfg, ctx, train_q, dev_q, test_q, rt.device)
    fit = run["fit"]
    metrics: dict[str, float] = {}
    rows = []
    if test_q:
        predicted = [s.text for s in run["spans"]]
        refs = [q.references for q in test_q]
        metrics.update(test_exact_match=exact_match(predicted, refs), test_f1=squad_f1(predicted, refs))
        rows.append(["fine-tuned span head", len(test_q), metrics["test_exact_match"], metrics["test_f1"]])
        if cfg.sliding_window_baseline:
            baseline = sliding_window_answers(train_q, test_q)
            metrics["baseline_sliding_window_test_exact_match"] = exact_match(baseline, refs)
            metrics["baseline_sliding_window_test_f1"] = squad_f1(baseline, refs)
            rows.append(
                [
                    "sliding window (Rajpurkar et al. 2016)",
                    len(test_q),
                    metrics["baseline_sliding_window_test_exact_match"],
                    metrics["baseline_sliding_window_test_f1"],
                ]
            )
        with (ctx.dir / "predictions.jsonl").open("w", encoding="utf-8") as fh:
            for q, s in zip(test_q, run["spans"]):
                record = {
                    "id": q.id,
                    "title": q.title,
                    "question": q.example.question,
                    "prediction": s.text,
                    "start": s.start,
                    "end": s.end,
                    "score": s.score,
                    "references": q.references,
                    "exact_match": exact_match([s.text], [q.references]),
                    "f1": squad_f1([s.text], [q.references]),
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tables = [
        {
            "title": "SQuAD v1.1 test split (articles never trained on)",
            "header": ["system", "questions", "exact_match", "f1"],
            "rows": rows,
        },
        {
            "title": "held-out training articles (best step)",
            "header": ["", "exact_match", "f1", "val_loss"],
            "rows": [
                ["before fine-tuning", *(fit.initial_metrics[k] for k in ("exact_match", "f1", "val_loss"))],
                [f"step {fit.best_step}", *(fit.best_metrics[k] for k in ("exact_match", "f1", "val_loss"))],
            ],
        },
    ]
    write_json_atomic(ctx.dir / "report.json", {"tables": tables})
    metrics.update(
        dev_exact_match=float(fit.best_metrics["exact_match"]),
        dev_f1=float(fit.best_metrics["f1"]),
        dev_f1_before=float(fit.initial_metrics["f1"]),
        val_loss=float(fit.best_metrics["val_loss"]),
        train_questions=len(train_q),
        dev_questions=len(dev_q),
        test_questions=len(test_q),
        mismatched_answers=mismatched,
        **run["counts"],
        **fit.run_metrics(),
    )
    return metrics


def sliding_window_answers(train_q: list[Question], test_q: list[Question]) -> list[str]:
    """The sliding-window baseline's answers to ``test_q``, its one setting fitted on ``train_q``."""
    from lmforge.eval.classic.qa import fit_max_len, predict_span
    from lmforge.eval.records import Doc

    pool = [
        Doc(
            q.example.question,
            references=q.references,
            fields={"context": q.example.context, "question": q.example.question},
        )
        for q in train_q
    ]
    max_len = fit_max_len(pool)
    return [predict_span(q.example.context, q.example.question, max_len) for q in test_q]


def build_reader(trunk: Any) -> Any:
    """``{"trunk", "heads": {"qa": SpanHead}}`` as one module (what ``fit`` trains and ``save_finetuned``
    saves); ``span_logits`` runs it."""
    from torch import nn

    from lmforge.model.heads import SpanHead

    return nn.ModuleDict({"trunk": trunk, "heads": nn.ModuleDict({TASK: SpanHead(trunk.config)})})


def span_logits(model: Any, idx: Any, mask: Any, token_type_ids: Any) -> tuple[Any, Any]:
    """Start and end logits ``[B, T]`` of the reader ``model`` (``build_reader``); token types are dropped
    for an encoder without segment embeddings."""
    from lmforge.model.heads import hidden_states

    encoder = getattr(model.trunk, "encoder", model.trunk)
    if getattr(encoder, "seg_emb", None) is None:
        token_type_ids = None
    return model.heads[TASK](hidden_states(model.trunk, idx, mask, token_type_ids))


def answer(
    model: Any, questions: list[Question], windows: list[Window], *, pad_id: int, cfg: Config, device: str
) -> tuple[list[Span], float]:
    """``(one Span per question, mean window loss)`` in eval mode."""
    from lmforge.training.qa_spans import decode, window_logits

    was_training = model.training
    model.eval()
    try:
        logits, loss = window_logits(
            lambda idx, mask, types: span_logits(model, idx, mask, types),
            windows,
            pad_id,
            batch_size=2 * cfg.batch_size,
            device=device,
        )
    finally:
        model.train(was_training)
    return decode([q.example for q in questions], windows, logits, cfg.max_answer_tokens), loss


def _fine_tune(
    cfg: Config, ctx: StageContext, train_q: list, dev_q: list, test_q: list, device: str
) -> dict[str, Any]:
    """Train the reader; returns the best checkpoint's test answers, the fit and the window counts."""
    import numpy as np
    import torch

    from lmforge.eval.metrics import exact_match, squad_f1
    from lmforge.tokenizer.train import load_tokenizer, special_id
    from lmforge.training import finetune as ft
    from lmforge.training.qa_spans import collate, featurize, span_loss

    torch.manual_seed(cfg.seed)
    trunk, mcfg, ckpt_dir = ft.load_base(
        ctx.inputs["model"], cfg.checkpoint, device=device, dropout=cfg.dropout
    )
    tok_path = ckpt_dir / TOKENIZER_FILE
    tok = load_tokenizer(tok_path)
    pad_id = special_id(tok, "pad")
    model = build_reader(trunk).to(device)

    def windows(questions: list[Question]) -> list[Window]:
        return featurize(tok, [q.example for q in questions], max_len=cfg.max_len, doc_stride=cfg.doc_stride)

    x_train, x_dev = windows(train_q), windows(dev_q)
    rng = np.random.default_rng(cfg.seed)

    def next_batch() -> tuple[Any, int]:
        rows = [x_train[i] for i in rng.integers(0, len(x_train), size=cfg.batch_size)]
        return tuple(t.to(device) for t in collate(rows, pad_id)), len(rows)

    def loss_sum(batch: Any) -> Any:
        idx, mask, types, start, end = batch
        return span_loss(*span_logits(model, idx, mask, types), start, end, mask)

    def evaluate() -> dict[str, float]:
        spans, loss = answer(model, dev_q, x_dev, pad_id=pad_id, cfg=cfg, device=device)
        predicted, refs = [s.text for s in spans], [q.references for q in dev_q]
        return {
            "val_loss": loss,
            "exact_match": exact_match(predicted, refs),
            "f1": squad_f1(predicted, refs),
        }

    result = ft.fit(model, cfg, next_batch, loss_sum, evaluate, monitor="f1", log_metrics=ctx.log_metrics)
    meta = {
        "method": "qa",
        "head": "span",
        "max_len": cfg.max_len,
        "doc_stride": cfg.doc_stride,
        "max_answer_tokens": cfg.max_answer_tokens,
        "base": str(ckpt_dir),
    }
    ft.save_with_heads(ctx.dir / "ckpt", model, result, mcfg, tokenizer_path=tok_path, meta=meta)
    x_test = windows(test_q)
    spans = answer(model, test_q, x_test, pad_id=pad_id, cfg=cfg, device=device)[0] if test_q else []
    counts = {
        "train_windows": len(x_train),
        "train_windows_without_answer": sum(w.start == 0 for w in x_train),
        "test_windows": len(x_test),
    }
    return {"spans": spans, "fit": result, "counts": counts}
