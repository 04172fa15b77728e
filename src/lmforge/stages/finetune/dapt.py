"""Domain-adaptive continued pretraining with replay of general data (stage kind ``finetune.dapt``).

Next-token training continues on a domain corpus (Gururangan et al. 2020, "Don't Stop Pretraining").
To keep general knowledge, a fraction ``replay`` of every batch's rows is drawn from the general
(pretraining) data, experience replay as in continual learning (Robins 1995; Chaudhry et al. 2019).
The stage measures both sides of the trade-off before and after: the domain perplexity on held-out
domain documents and the general perplexity on the general validation split; ``forgetting`` is the
rise of the general loss (nats per token). The best checkpoint minimises the held-out domain loss.

``domain``: source specs as the data stage reads them (files, directories, globs of .txt/.md/.jsonl/
.csv/.parquet, or ``builtin:NAME``); ``val_fraction`` of the documents is held out (of the tokens, for
fewer than ten documents, e.g. one .txt file).
``general``: the pretraining tokenizer stage (its ``tokens/train`` and ``tokens/val``; the default,
``@tokenizer``), or source specs of general text, tokenized here and split like the domain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import StageContext, run_stage, write_json_atomic
from lmforge.training.options import FinetuneOptions

log = logging.getLogger(__name__)

STAGE = "finetune.dapt"
VERSION = 1


@dataclass
class Config(FinetuneOptions):
    """Options of ``lmforge finetune dapt``."""

    domain: list[str] = opt([], "domain corpus: files, directories, globs or builtin:NAME", path=True)
    general: str = opt("@tokenizer", "general data: a tokenizer stage directory, or a source spec", path=True)
    text_field: str = opt("text", "text field / column of .jsonl, .csv and .parquet sources")
    replay: float = opt(0.0, "fraction of each batch's rows drawn from the general data (0 = none)")
    lr: float = opt(3e-4, "peak learning rate (lower than pretraining: the model is already trained)")
    eval_tokens: int = opt(32768, "tokens scored per perplexity evaluation (0 = the whole split)")

    def validate(self) -> None:
        super().validate()
        if not self.domain:
            raise ConfigError("domain", "name the domain corpus (files, a directory, a glob or builtin:NAME)")
        if not 0.0 <= self.replay < 1.0:
            raise ConfigError("replay", f"must be in [0, 1), got {self.replay}")
        at_least(self, 0, "eval_tokens")


INPUTS = ("model", "general")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Continue pretraining (or return the cached result); returns the stage manifest."""
    from lmforge.data.sources import fingerprint, resolve_sources
    from lmforge.eval.corpus import TASK_SOURCE

    specs = resolve_sources(cfg.domain, cfg.text_field, tasks=TASK_SOURCE)
    found = {"fingerprint": {"domain": [fingerprint(s) for s in specs]}}
    inputs = {"model": cfg.model}
    if cfg.general.startswith("builtin:"):
        found["fingerprint"]["general"] = [
            fingerprint(s) for s in resolve_sources([cfg.general], cfg.text_field, tasks=TASK_SOURCE)
        ]
    else:
        inputs["general"] = cfg.general
    return run_stage(
        STAGE, cfg, out=cfg.out, inputs=inputs, work=train, version=VERSION, force=force, **found
    )


def _encode(tok: Any, specs: list[str], text_field: str) -> list[list[int]]:
    """Every document of ``specs`` as ``<|bos|>`` + its token ids."""
    from lmforge.data.sources import iter_documents, resolve_sources
    from lmforge.eval.corpus import TASK_SOURCE
    from lmforge.tokenizer.train import special_id

    bos = special_id(tok, "bos")
    texts = [
        doc.text
        for spec in resolve_sources(specs, text_field, tasks=TASK_SOURCE)
        for doc in iter_documents(spec)
    ]
    return [[bos, *e.ids] for e in tok.encode_batch(texts, add_special_tokens=False)]


def _streams(docs: list[list[int]], val_fraction: float, seed: int, what: str) -> tuple[Any, Any]:
    """``(train stream, held-out stream)``: whole documents held out by ``val_fraction`` when there are
    ten or more, else the last ``val_fraction`` of the tokens (the classic single-file split)."""
    import numpy as np

    from lmforge.data.supervised import holdout

    fraction = val_fraction or 0.1
    if len(docs) >= 10:
        train_docs, val_docs = holdout(docs, fraction, seed)
        return tuple(
            np.asarray([t for d in part for t in d], dtype=np.int64) for part in (train_docs, val_docs)
        )
    stream = np.asarray([t for d in docs for t in d], dtype=np.int64)
    cut = int(len(stream) * (1 - fraction))
    if cut < 2 or len(stream) - cut < 2:
        raise ConfigError(what, f"too little text to hold some out: {len(stream)} tokens")
    return stream[:cut], stream[cut:]


def train(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Measure, train with replay, measure again."""
    import numpy as np
    import torch

    from lmforge.eval.lm import evaluate_lm
    from lmforge.tokenizer.shards import open_tokens
    from lmforge.tokenizer.train import token_byte_lengths
    from lmforge.training import finetune as ft
    from lmforge.training.batches import window_batch
    from lmforge.training.step import token_loss

    rt, model, mcfg, ckpt_dir, tok_path, tok = ft.begin(cfg, ctx)
    device = rt.device
    if mcfg.arch != "decoder":
        raise ConfigError(
            "model", f"continued pretraining here needs a decoder checkpoint, got an {mcfg.arch}"
        )
    token_bytes = token_byte_lengths(tok)
    domain_train, domain_val = _streams(
        _encode(tok, cfg.domain, cfg.text_field), cfg.val_fraction, cfg.seed, "domain"
    )
    general = ctx.inputs.get("general")
    if general is not None and (Path(general) / "tokens" / "train").is_dir():
        general_train = open_tokens(Path(general) / "tokens" / "train")
        general_val = open_tokens(Path(general) / "tokens" / "val")
    else:
        docs = _encode(tok, [str(general) if general is not None else cfg.general], cfg.text_field)
        general_train, general_val = _streams(docs, cfg.val_fraction, cfg.seed + 1, "general")
    log.info(
        "domain: %d train / %d held-out tokens; general: %d train / %d val tokens; replay %.2f",
        len(domain_train),
        len(domain_val),
        len(general_train),
        len(general_val),
        cfg.replay,
    )
    T = min(mcfg.block_size, len(domain_train) - 1, len(general_train) - 1)
    n_replay = round(cfg.replay * cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)

    def next_batch() -> tuple[Any, int]:
        x, y = window_batch(domain_train, cfg.batch_size - n_replay, T, rng)
        if n_replay:
            gx, gy = window_batch(general_train, n_replay, T, rng)
            x, y = torch.cat([x, gx]), torch.cat([y, gy])
        return (x.to(device), y.to(device)), y.numel()

    def loss_sum(batch: Any) -> torch.Tensor:
        x, y = batch
        return token_loss(model(x), y)[0]

    def perplexities() -> dict[str, float]:
        out = {}
        for name, stream in (("domain", domain_val), ("general", general_val)):
            r = evaluate_lm(
                model,
                stream,
                block_size=mcfg.block_size,
                batch_size=cfg.batch_size,
                token_bytes=token_bytes,
                max_tokens=cfg.eval_tokens or None,
                device=device,
            )
            out[f"{name}_loss"], out[f"{name}_ppl"] = float(r["loss"]), float(r["perplexity"])
        return out

    result = ft.fit(
        model, cfg, next_batch, loss_sum, perplexities, monitor="domain_loss", log_metrics=ctx.log_metrics
    )
    meta = {"method": "dapt", "base": str(ckpt_dir), "replay": cfg.replay}
    ft.save_best_and_last(
        ctx.dir / "ckpt",
        model,
        result,
        lambda d: ft.save_finetuned(d, model, mcfg, tokenizer_path=tok_path, meta=meta),
    )
    before, after = result.initial_metrics, result.best_metrics
    rows = [
        [what, before[f"{what}_ppl"], after[f"{what}_ppl"], after[f"{what}_loss"] - before[f"{what}_loss"]]
        for what in ("domain", "general")
    ]
    table = {
        "title": f"perplexity before and after (replay {cfg.replay:g})",
        "header": ["data", "ppl before", "ppl after", "loss change (nats/token)"],
        "rows": rows,
    }
    write_json_atomic(ctx.dir / "report.json", {"tables": [table]})
    return {
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in after.items()},
        "forgetting": after["general_loss"] - before["general_loss"],
        "domain_gain": before["domain_loss"] - after["domain_loss"],
        "replay": cfg.replay,
        **result.run_metrics(),
    }
