"""Contrastive fine-tuning of sentence embeddings on text pairs (stage kind ``finetune.contrastive``).

Pairs come from a file (``.jsonl`` / ``.csv`` / ``.tsv`` / ``A<tab>B`` lines, ``data.supervised.read_pairs``)
or from a task, ``train: task:squad@DIR`` or ``task:boolq@DIR`` (each question → its passage) or
``task:mbpp@DIR`` (each problem statement → its solution: code search), the task's training split
trained on and its test split held out (split by article / page title / MBPP's task ids, so no passage
is on both sides; ``eval.corpus.task_pairs``). Without ``val`` a file's pairs are held out
by passage (``holdout_groups`` on the ``b`` text): every pair of a passage lands on the same side.

Each batch holds ``batch_size`` pairs; both sides are embedded by the trunk (pooled, L2-normalised)
and trained with InfoNCE, every other pair of the batch serving as a negative except pairs that share
the passage (``training.contrastive``). ``pooling: auto`` takes the base checkpoint's declared pooling
(``pooling.json`` of a sentence-transformers import, ``training.finetune.declared_pooling``), else
``mean``. Texts are cut to ``max_len`` tokens (0 = the model's block size).

Retrieval of the held-out pairs: each held-out ``a`` ranks every distinct held-out ``b``; recall@1, @5
and @10 (ties counted by expectation, ``recall_from_scores``) are reported for the fine-tuned model
(the best checkpoint by mean reciprocal rank, ``mrr``, on a selection set: ``val_fraction`` of the training pairs, held out
by passage, their queries ranking their own and every training passage; the reported pairs are never
used to choose a step), for the untouched base model with the same pooling
(``*_before``, scored before the first step) and for BM25 (``bm25_*``; Robertson & Zaragoza 2009,
``eval.classic.bm25``, the held-out passages as its collection). The checkpoint is a normal one plus
``finetune.json`` naming the pooling, so ``training.contrastive.load_embedder`` + ``embed`` turn any
text into the trained vectors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, above, opt, retuned
from lmforge.runstore import StageContext, run_config, write_json_atomic
from lmforge.training.options import SequenceOptions

log = logging.getLogger(__name__)

STAGE = "finetune.contrastive"
VERSION = 2
TASK_PREFIX = "task:"
KS = (1, 5, 10)


@dataclass
class Config(SequenceOptions):
    """Options of ``lmforge finetune contrastive``."""

    train: str = opt(
        "",
        "pairs: .jsonl {query, positive} / .csv / .tsv / A<tab>B lines, or task:squad@DIR | task:boolq@DIR | task:mbpp@DIR"
        " (question → passage; the task's test split held out)",
        path=True,
    )
    val: str = opt("", "held-out pairs ('' = hold out val_fraction of train, by passage)", path=True)
    pooling: Literal["auto", "mean", "last", "cls"] = opt(
        "auto", "how token states become one sentence vector (auto = the base's pooling.json, else mean)"
    )
    temperature: float = opt(0.05, "InfoNCE temperature (similarities are divided by it)")
    symmetric: bool = opt(True, "also train the positive → query direction")
    lr: float = retuned(SequenceOptions, "lr", 3e-4)

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "a pairs file or task is required (--train pairs.jsonl)")
        above(self, 0, "temperature")
        if self.batch_size < 2:
            raise ConfigError("batch_size", "in-batch negatives need batch_size >= 2")
        if self.train.startswith(TASK_PREFIX):
            task_source(self.train)
            if self.val:
                raise ConfigError("val", "a task's held-out pairs are its test split; leave val empty")


def task_source(spec: str) -> tuple[str, str]:
    """``(task name, data directory)`` of ``task:NAME@DIR``.

    Raises:
        ConfigError: a task without passages, or no data directory.
    """
    from lmforge.eval.corpus import PAIR_FIELDS  # the pair readers import numpy: --help stays light

    name, _, where = spec[len(TASK_PREFIX) :].partition("@")
    if name not in PAIR_FIELDS:
        raise ConfigError("train", f"{spec}: pair tasks are {', '.join(PAIR_FIELDS)} (task:squad@DIR)")
    if not where:
        raise ConfigError("train", f"{spec}: a task needs its data directory: task:{name}@../shared/data")
    return name, where


INPUTS = ("model", "train", "val")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train the embedder (or return the cached result); returns the stage manifest."""
    if cfg.train.startswith(TASK_PREFIX):  # built-in task data: the task's name is the cache key
        name, _ = task_source(cfg.train)
        fields, found = ("model",), {"fingerprint": {"train": f"{TASK_PREFIX}{name}"}}
    else:
        fields, found = INPUTS, {}
    return run_config(STAGE, cfg, fields, train, version=VERSION, force=force, **found)


def read_splits(cfg: Config, ctx: StageContext, problems: list) -> tuple[list, list]:
    """``(training pairs, held-out pairs)``: a task's train and test splits, or the files (module
    docstring); training pairs whose passage is a held-out one are dropped."""
    from lmforge.data.supervised import holdout_groups, read_pairs
    from lmforge.eval.corpus import task_pairs

    if cfg.train.startswith(TASK_PREFIX):
        pairs, val_pairs = task_pairs(*task_source(cfg.train))
    else:
        pairs = read_pairs(ctx.inputs["train"], problems)
        if "val" in ctx.inputs:
            val_pairs = read_pairs(ctx.inputs["val"], problems)
        else:
            pairs, val_pairs = holdout_groups(pairs, [p.b for p in pairs], cfg.val_fraction or 0.1, cfg.seed)
    held = {p.b for p in val_pairs}
    kept = [p for p in pairs if p.b not in held]
    if len(kept) < len(pairs):
        log.warning("%d training pairs dropped: their passage is a held-out one", len(pairs) - len(kept))
    return kept, val_pairs


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read pairs, score BM25, train with InfoNCE (the base model scored first), score again."""
    import numpy as np
    import torch

    from lmforge.data.supervised import holdout_groups, log_problems, skipped
    from lmforge.eval.classic.bm25 import bm25_scores
    from lmforge.model.heads import embed_batch
    from lmforge.tokenizer.texts import encode_texts, pad_batch
    from lmforge.tokenizer.train import special_id
    from lmforge.training import finetune as ft
    from lmforge.training.contrastive import embed, info_nce, retrieval_metrics

    rt, model, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx)
    device = rt.device
    seq_len = ft.sequence_length(cfg.max_len, mcfg)
    pooling = ft.resolve_pooling(cfg.pooling, ckpt_dir, "mean")
    pad_id = special_id(tok, "pad")
    problems: list = []
    pairs, val_pairs = read_splits(cfg, ctx, problems)
    val_pairs = val_pairs[: cfg.max_eval_examples or None]
    log_problems(problems, "pairs")
    # the best step is chosen on passages carved from training, so the held-out pairs are scored once
    pairs, select_pairs = holdout_groups(pairs, [p.b for p in pairs], cfg.val_fraction or 0.1, cfg.seed)
    select_pairs = select_pairs[: cfg.max_eval_examples or None]
    if len(pairs) < 2 or len(val_pairs) < 2 or len(select_pairs) < 2:
        raise ConfigError(
            "train",
            f"needs >= 2 training, selection and held-out pairs, got {len(pairs)}, {len(select_pairs)} "
            f"and {len(val_pairs)}",
        )

    def ranking(held: list, distractors: tuple = ()) -> tuple[list[str], list[str], torch.Tensor]:
        """``(queries, candidates, target index per query)``: each distinct passage (and distractor)
        ranked once."""
        candidates = list(dict.fromkeys([*(p.b for p in held), *distractors]))
        where = {b: i for i, b in enumerate(candidates)}
        return [p.a for p in held], candidates, torch.tensor([where[p.b] for p in held])

    queries, candidates, targets = ranking(val_pairs)
    log.info(
        "%d training pairs (%d more choose the best step); %d held-out queries over %d passages; "
        "pooling %s, %d tokens",
        len(pairs),
        len(select_pairs),
        len(queries),
        len(candidates),
        pooling,
        seq_len,
    )
    bm25 = retrieval_metrics(torch.from_numpy(bm25_scores(queries, candidates)), targets, KS)
    xa = encode_texts(tok, [p.a for p in pairs], mcfg.arch, seq_len)
    xb = encode_texts(tok, [p.b for p in pairs], mcfg.arch, seq_len)
    passage_of = {b: i for i, b in enumerate(dict.fromkeys(p.b for p in pairs))}
    groups = np.array([passage_of[p.b] for p in pairs])  # pairs of one passage: no negatives of each other
    rng = np.random.default_rng(cfg.seed)
    size = min(cfg.batch_size, len(pairs))

    def next_batch() -> tuple[Any, int]:
        rows = rng.choice(len(pairs), size=size, replace=False)
        a = pad_batch([xa[i] for i in rows], pad_id)
        b = pad_batch([xb[i] for i in rows], pad_id)
        g = torch.from_numpy(groups[rows]).to(device)
        return (tuple(t.to(device) for t in a), tuple(t.to(device) for t in b), g), size

    def loss_sum(batch: Any) -> torch.Tensor:
        (ia, ma), (ib, mb), g = batch
        ea, eb = embed_batch(model, ia, ma, pooling), embed_batch(model, ib, mb, pooling)
        return info_nce(ea, eb, cfg.temperature, cfg.symmetric, groups=g)

    def score(held: tuple[list[str], list[str], torch.Tensor]) -> dict[str, float]:
        kw = {"pooling": pooling, "device": device, "max_len": seq_len, "batch_size": 2 * cfg.batch_size}
        qs, cands, tgt = held
        sims = embed(model, tok, qs, **kw) @ embed(model, tok, cands, **kw).T  # [N, M] cosines
        return retrieval_metrics(sims, tgt, KS)

    # a handful of selection passages is an easy ranking; the training passages join them as distractors
    selection = ranking(select_pairs, tuple(p.b for p in pairs))
    before = score((queries, candidates, targets))  # the untouched base model on the held-out pairs

    result = ft.fit(
        model,
        cfg,
        next_batch,
        loss_sum,
        lambda: score(selection),
        monitor="mrr",
        log_metrics=ctx.log_metrics,
    )
    meta = {"method": "contrastive", "pooling": pooling, "base": str(ckpt_dir)}
    ft.save_best_and_last(
        ctx.dir / "ckpt",
        model,
        result,
        lambda d: ft.save_finetuned(d, model, mcfg, tokenizer_path=tok_path, meta=meta),
    )
    after = score((queries, candidates, targets))  # the best step's weights (save_best_and_last)
    table = {
        "title": f"retrieval of held-out pairs ({len(queries)} queries, {len(candidates)} candidates)",
        "header": ["metric", "base model", "fine-tuned", "BM25"],
        "rows": [[k, before[k], after[k], bm25[k]] for k in after],
    }
    write_json_atomic(ctx.dir / "report.json", {"tables": [table]})
    return {
        **after,
        **{f"{k}_before": v for k, v in before.items()},
        **{f"bm25_{k}": v for k, v in bm25.items()},
        "train_pairs": len(pairs),
        "select_pairs": len(select_pairs),
        "select_mrr": result.best_metrics["mrr"],
        "val_queries": len(queries),
        "val_candidates": len(candidates),
        "skipped_records": skipped(problems),
        **result.run_metrics(),
    }
