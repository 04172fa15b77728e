"""Named-entity recognition as token classification (stage kind ``finetune.ner``), beside classic taggers.

Data: CoNLL files (``token<TAB>BIO-tag`` lines, blank lines between sentences; ``eval.loaders.read_conll``),
WNUT-17 (Derczynski et al. 2017) under ``../shared/data/wnut17`` by default: trained on ``train``, the
best step chosen by ``dev`` entity F1, scored once on ``test``.

Words → subwords (``encode_words``): a sentence's words are joined by single spaces and encoded in one
pass (so each word is split as it would be in running text, with its leading space where the
tokenizer marks one); each subword is assigned to the word its character offsets fall in, and the
first subword of each word carries the word's tag, as in BERT (Devlin et al. 2019, §4.3). Other
subwords, the frame tokens (``[CLS]``/``[SEP]`` for encoders, ``<|bos|>``/``<|eos|>`` for decoders) and
padding are ignored by the loss; a word's prediction is read at its first subword. Words cut off by
``max_len`` (default the model's ``block_size``; or with no subword) are predicted ``O`` and counted in
``truncated_words``.

Model: the checkpoint's trunk (an encoder pretrained with ``objective: mlm`` sees both sides of every
word; a causal decoder sees only the left context) → ``model.heads.TokenClassificationHead`` (a
linear layer per position). Cross-entropy summed over the supervised subwords and divided by their
count (``training.finetune.fit``), trunk and head trained together (``freeze_trunk``: the head
alone). Scores: entity-level precision/recall/F1, overall and per type (``eval.metrics.entity_scores``,
equal to seqeval). The same test split scores the classic taggers of ``eval.classic.ner`` trained on
the same sentences: the most-frequent-tag lookup (``baseline_lookup_*``) and a CRF
(``baseline_crf_*``).

``init_embeddings`` (for word-level tokenizers) first overwrites the trunk's token embeddings with
word2vec vectors (``eval.static_embeddings.init_token_embeddings``): trained here on the training
sentences, or read from a word2vec-format file; ``init_embedding_rows`` counts the rows set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import TOKENIZER_FILE, StageContext, config_inputs, run_stage, write_json_atomic
from lmforge.training.options import SequenceOptions

log = logging.getLogger(__name__)

STAGE = "finetune.ner"
VERSION = 1
TASK = "ner"
IGNORE = -100  # label of positions the loss skips (F.cross_entropy's default ignore_index)
WNUT17 = "../shared/data/wnut17"


@dataclass
class Config(SequenceOptions):
    """Options of ``lmforge finetune ner``."""

    train: str = opt(
        f"{WNUT17}/wnut17train.conll", "training sentences: a CoNLL token<TAB>tag file", path=True
    )
    dev: str = opt(
        f"{WNUT17}/emerging.dev.conll",
        "sentences that choose the best step by entity F1 ('' = hold out val_fraction of train)",
        path=True,
    )
    test: str = opt(
        f"{WNUT17}/emerging.test.annotated", "sentences scored once at the end ('' = none)", path=True
    )
    max_train_examples: int = opt(0, "use at most this many training sentences (0 = all)")
    scheme: Literal["conlleval", "iob2"] = opt(
        "conlleval", "how BIO tags become entities: conlleval (seqeval's default) or iob2 (seqeval strict)"
    )
    freeze_trunk: bool = opt(False, "train the head only (a linear probe of the trunk)")
    lookup_baseline: bool = opt(True, "also score the most-frequent-tag lookup")
    crf_baseline: bool = opt(True, "also train and score a CRF on hand features (needs sklearn-crfsuite)")
    crf_iterations: int = opt(100, "L-BFGS iterations of the CRF")
    init_embeddings: str = opt(
        "",
        "before fine-tuning, set the token embeddings from word vectors: word2vec (skip-gram trained on the"
        " training sentences, size n_embd) or a word2vec-format file (.txt/.vec, .bin); word-level tokenizers",
    )

    def validate(self) -> None:
        super().validate()
        if not self.train:
            raise ConfigError("train", "a training file is required (e.g. --train data/wnut17/train.conll)")
        at_least(self, 0, "max_train_examples")
        at_least(self, 1, "crf_iterations")


INPUTS = ("model", "train", "dev", "test")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train the tagger (or return the cached result); returns the stage manifest."""
    inputs = config_inputs(cfg, *INPUTS)
    if cfg.init_embeddings not in ("", "word2vec"):
        inputs["init_embeddings"] = cfg.init_embeddings
    return run_stage(STAGE, cfg, out=cfg.out, inputs=inputs, work=train, version=VERSION, force=force)


# --------------------------------------------------------------------------------------------------
# words → subwords


@dataclass(frozen=True)
class Encoded:
    """One sentence for the model: token ids, a label per token (``IGNORE`` except at first subwords)
    and, per word, the position of its first subword (-1: cut off or no subword)."""

    ids: list[int]
    labels: list[int]
    first: list[int]


def encode_words(
    tok: Any, sentences: list[list[str]], tags: list[list[int]] | None, arch: str, block_size: int
) -> list[Encoded]:
    """Encode word-split sentences with the first-subword labelling rule (module docstring).

    ``tags`` holds one label index per word (None: unlabelled, every label ``IGNORE``).

    Raises:
        ValueError: a sentence and its tags differ in length.
    """
    from lmforge.tokenizer.texts import encode_as_text, frame_markers

    start, end = frame_markers(tok, arch)
    texts, spans = [], []
    for words in sentences:
        offsets, pos = [], 0
        for w in words:
            offsets.append((pos, pos + len(w)))
            pos += len(w) + 1
        texts.append(" ".join(words))
        spans.append(offsets)
    encodings = encode_as_text(tok, texts)
    out = []
    for n, (enc, offsets) in enumerate(zip(encodings, spans)):
        word_tags = tags[n] if tags is not None else [IGNORE] * len(offsets)
        if len(word_tags) != len(offsets):
            raise ValueError(f"sentence {n}: {len(offsets)} words but {len(word_tags)} tags")
        ids = [start, *enc.ids[: block_size - 2], end]
        labels = [IGNORE] * len(ids)
        first = [-1] * len(offsets)
        w = 0
        for k, (s, e) in enumerate(enc.offsets[: block_size - 2]):
            while w < len(offsets) and offsets[w][1] <= s:
                w += 1  # subwords come in text order: advance to the word this one can overlap
            if w < len(offsets) and s < offsets[w][1] and e > offsets[w][0] and first[w] < 0:
                first[w] = k + 1  # +1: the start token
                labels[k + 1] = word_tags[w]
        out.append(Encoded(ids, labels, first))
    return out


# --------------------------------------------------------------------------------------------------
# the stage


def _read(ctx: StageContext, key: str) -> list[tuple[list[str], list[str]]]:
    from lmforge.eval.loaders import read_conll

    sentences = read_conll(ctx.inputs[key])
    if not sentences:
        raise ConfigError(key, f"{ctx.inputs[key]} holds no sentences (expected token<TAB>tag lines)")
    return sentences


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read the splits, fine-tune, score the best checkpoint and the classic taggers, write the report."""
    from lmforge.data.supervised import holdout
    from lmforge.eval.metrics import entity_scores
    from lmforge.runtime import create_runtime
    from lmforge.training.finetune import restart

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    restart(ctx)
    train_set = _read(ctx, "train")
    if "dev" in ctx.inputs:
        dev_set = _read(ctx, "dev")
    else:
        train_set, dev_set = holdout(train_set, cfg.val_fraction or 0.1, cfg.seed)
    test_set = _read(ctx, "test") if "test" in ctx.inputs else []
    if cfg.max_train_examples:
        train_set = train_set[: cfg.max_train_examples]
    dev_set = dev_set[: cfg.max_eval_examples or None]
    labels = sorted({t for _, tags in train_set for t in tags} | {"O"})
    log.info(
        "%d training, %d dev, %d test sentences; %d tags: %s",
        len(train_set),
        len(dev_set),
        len(test_set),
        len(labels),
        labels,
    )
    run = _fine_tune(cfg, ctx, train_set, dev_set, test_set, labels, rt.device)
    scored = test_set or dev_set
    split = "test" if test_set else "dev"
    gold = [tags for _, tags in scored]
    systems: dict[str, list[list[str]]] = {"model": run["predicted"]}
    if cfg.lookup_baseline:
        from lmforge.eval.classic.ner import most_frequent_tag

        systems["lookup"] = most_frequent_tag(train_set, [t for t, _ in scored])
    if cfg.crf_baseline:
        from lmforge.eval.classic.ner import crf_tagger

        systems["crf"] = crf_tagger(train_set, [t for t, _ in scored], max_iterations=cfg.crf_iterations)
    scores = {name: entity_scores(gold, predicted, cfg.scheme) for name, predicted in systems.items()}
    metrics: dict[str, float] = {}
    for name, s in scores.items():
        prefix = f"{split}_" if name == "model" else f"baseline_{name}_{split}_"
        metrics.update({f"{prefix}{k}": s[k] for k in ("precision", "recall", "f1", "macro_f1")})
        if name == "model":
            metrics.update({f"{prefix}f1_{t}": v["f1"] for t, v in s["per_type"].items()})
    names = {"model": "fine-tuned transformer", "lookup": "most-frequent tag", "crf": "CRF (hand features)"}
    tables = [
        {
            "title": f"{split} entity scores ({cfg.scheme})",
            "header": ["system", "precision", "recall", "f1", "macro_f1", "correct / gold / predicted"],
            "rows": [
                [names[n], s["precision"], s["recall"], s["f1"], s["macro_f1"], _counts(s)]
                for n, s in scores.items()
            ],
        },
        {
            "title": f"{split} F1 per entity type",
            "header": ["type", "support", *(names[n] for n in scores)],
            "rows": [
                [t, v["support"], *(s["per_type"].get(t, {}).get("f1", 0.0) for s in scores.values())]
                for t, v in scores["model"]["per_type"].items()
            ],
        },
    ]
    write_json_atomic(ctx.dir / "ner.json", {"labels": labels, "split": split, "scores": scores})
    write_json_atomic(ctx.dir / "report.json", {"tables": tables})
    fit = run["fit"]
    metrics.update(
        dev_f1=float(fit.best_metrics["f1"]),
        val_loss=float(fit.best_metrics["val_loss"]),
        train_sentences=len(train_set),
        dev_sentences=len(dev_set),
        test_sentences=len(test_set),
        truncated_words=run["truncated"],
        init_embedding_rows=run["init_rows"],
        **fit.run_metrics(),
    )
    return metrics


def _counts(s: dict[str, Any]) -> str:
    return f"{s['n_correct']} / {s['n_gold']} / {s['n_predicted']}"


def build_tagger(trunk: Any, n_labels: int) -> Any:
    """``{"trunk", "heads": {"ner": TokenClassificationHead}}`` as one module (what ``fit`` trains and
    ``save_finetuned`` saves); ``tag_logits`` runs it."""
    from torch import nn

    from lmforge.model.heads import TokenClassificationHead

    return nn.ModuleDict(
        {"trunk": trunk, "heads": nn.ModuleDict({TASK: TokenClassificationHead(trunk.config, n_labels)})}
    )


def tag_logits(model: Any, idx: Any, mask: Any) -> Any:
    """Label logits ``[B, T, C]`` of the tagger ``model`` (``build_tagger``) for ``idx`` ``[B, T]``."""
    from lmforge.model.heads import hidden_states

    return model.heads[TASK](hidden_states(model.trunk, idx, mask))


def as_tags(predicted: list[list[int]], labels: list[str]) -> list[list[str]]:
    """Label indices per word → tags; -1 (a word outside the context) → ``O``."""
    return [[labels[p] if p >= 0 else "O" for p in sent] for sent in predicted]


def _fine_tune(
    cfg: Config,
    ctx: StageContext,
    train_set: list,
    dev_set: list,
    test_set: list,
    labels: list[str],
    device: str,
) -> dict[str, Any]:
    """Train the tagger; returns the best checkpoint's per-word tags on test (else dev) and the fit."""
    import numpy as np
    import torch

    from lmforge.eval.metrics import entity_scores
    from lmforge.tokenizer.texts import pad_batch
    from lmforge.tokenizer.train import load_tokenizer, special_id
    from lmforge.training import finetune as ft

    torch.manual_seed(cfg.seed)
    trunk, mcfg, ckpt_dir = ft.load_base(
        ctx.inputs["model"], cfg.checkpoint, device=device, dropout=cfg.dropout
    )
    seq_len = ft.sequence_length(cfg.max_len, mcfg)
    tok_path = ckpt_dir / TOKENIZER_FILE
    tok = load_tokenizer(tok_path)
    pad_id = special_id(tok, "pad")
    init_rows = (
        _init_embeddings(cfg, ctx, trunk, tok, [w for w, _ in train_set]) if cfg.init_embeddings else 0
    )
    model = build_tagger(trunk, len(labels)).to(device)
    if cfg.freeze_trunk:
        model.trunk.requires_grad_(False)
    index = {t: i for i, t in enumerate(labels)}

    def encode(sentences: list, with_tags: bool) -> list[Encoded]:
        tags = [[index.get(t, index["O"]) for t in tags] for _, tags in sentences] if with_tags else None
        return encode_words(tok, [w for w, _ in sentences], tags, mcfg.arch, seq_len)

    x_train = [e for e in encode(train_set, True) if any(y != IGNORE for y in e.labels)]
    x_dev = encode(dev_set, True)
    rng = np.random.default_rng(cfg.seed)

    def batch_of(rows: list[Encoded]) -> tuple[Any, Any, Any]:
        idx, mask = pad_batch([e.ids for e in rows], pad_id)
        y = torch.full(idx.shape, IGNORE, dtype=torch.long)
        for i, e in enumerate(rows):
            y[i, : len(e.labels)] = torch.tensor(e.labels)
        return idx.to(device), mask.to(device), y.to(device)

    def next_batch() -> tuple[Any, int]:
        batch = batch_of([x_train[i] for i in rng.integers(0, len(x_train), size=cfg.batch_size)])
        return batch, int((batch[2] != IGNORE).sum())

    def loss_sum(batch: Any) -> Any:
        idx, mask, y = batch
        logits = tag_logits(model, idx, mask).float()  # [B, T, C]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")

    def evaluate() -> dict[str, float]:
        predicted, loss = predict_tags(model, x_dev, batch_of, 2 * cfg.batch_size)
        s = entity_scores([t for _, t in dev_set], as_tags(predicted, labels), cfg.scheme)
        return {"val_loss": loss, "f1": s["f1"], "precision": s["precision"], "recall": s["recall"]}

    result = ft.fit(model, cfg, next_batch, loss_sum, evaluate, monitor="f1", log_metrics=ctx.log_metrics)
    meta = {"method": "ner", "head": "token", "labels": {TASK: labels}, "base": str(ckpt_dir)}
    ft.save_with_heads(ctx.dir / "ckpt", model, result, mcfg, tokenizer_path=tok_path, meta=meta)
    scored = encode(test_set, False) if test_set else x_dev
    predicted, _ = predict_tags(model, scored, batch_of, 2 * cfg.batch_size)
    return {
        "predicted": as_tags(predicted, labels),
        "truncated": sum(f < 0 for e in scored for f in e.first),
        "init_rows": init_rows,
        "fit": result,
    }


def _init_embeddings(cfg: Config, ctx: StageContext, trunk: Any, tok: Any, sentences: list) -> int:
    """Copy word vectors into the trunk's token embeddings (``eval.static_embeddings``); returns the rows set."""
    from lmforge.eval.static_embeddings import init_token_embeddings, train_word2vec
    from lmforge.tokenizer.train import tokenizer_kind

    emb = trunk.encoder.tok_emb if hasattr(trunk, "encoder") else trunk.tok_emb
    if cfg.init_embeddings == "word2vec":
        kv = train_word2vec(sentences, vector_size=emb.weight.shape[1], min_count=1, seed=cfg.seed)
    else:
        from gensim.models import KeyedVectors

        path = str(ctx.inputs["init_embeddings"])
        kv = KeyedVectors.load_word2vec_format(path, binary=path.endswith(".bin"))
    if tokenizer_kind(tok) != "word":
        log.warning("init_embeddings: a %s tokenizer's subwords rarely match words", tokenizer_kind(tok))
    return init_token_embeddings(emb.weight, tok.get_vocab(), kv)


def predict_tags(
    model: Any, encoded: list[Encoded], batch_of: Any, batch_size: int
) -> tuple[list[list[int]], float]:
    """``(label index per word per sentence, mean loss per supervised subword)`` in eval mode.

    ``batch_of(rows)`` pads ``Encoded`` rows to ``(idx, mask, labels)``. A word without a subword in the
    context gets -1 (``as_tags`` reads it as ``O``). Sentences are batched by length; order is kept.
    """
    import torch

    was_training = model.training
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    predicted: list[list[int]] = [[] for _ in encoded]
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            idx, mask, y = batch_of([encoded[i] for i in rows])
            logits = tag_logits(model, idx, mask).float()  # [b, T, C]
            total += float(
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
            )
            n += int((y != IGNORE).sum())
            best = logits.argmax(dim=-1).tolist()  # [b, T]
            for r, i in enumerate(rows):
                predicted[i] = [best[r][f] if f >= 0 else -1 for f in encoded[i].first]
    model.train(was_training)
    return predicted, total / max(n, 1)
