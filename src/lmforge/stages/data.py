"""Read sources, clean them, drop exact duplicates, and write train/val parquet shards.

Sources are validated before any work: ``builtin:python-docs`` (the Python language reference and
standard-library docstrings every CPython holds), ``builtin:python-code`` (the standard library's
source), or files, directories and globs of txt / md / jsonl / parquet / csv, optionally .gz / .zst /
.bz2. Every document is normalised (NFC, control characters, whitespace); empty documents and exact
duplicates are dropped with their reason recorded in ``stats.json`` and ``rejects/`` (when enabled).
Bad records (malformed JSON lines, missing fields, invalid UTF-8) are reported with file and line
and the run continues. Documents go to train or val by a hash of their id, so the split is stable.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.errors import InputError
from lmforge.runstore import StageContext, run_stage, write_json_atomic

log = logging.getLogger(__name__)

STAGE = "data"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge data``."""

    sources: list[str] = opt(["builtin:python-docs"], "builtin:NAME, files, directories or globs to read")
    text_field: str = opt("text", "JSON key / column holding the text in jsonl, csv and parquet files")
    out: str = opt("", "output stage directory", path=True)
    val_fraction: float = opt(0.05, "fraction of documents held out for validation (by id hash)")
    split_seed: int = opt(0, "seed of the train/val split hash")
    rows_per_shard: int = opt(50_000, "documents per parquet shard")
    max_docs: int = opt(0, "stop after this many input documents (0 = all)")
    write_rejects: bool = opt(True, "write dropped documents with their reason to rejects/")

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources", "at least one source is required (e.g. builtin:python-docs)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if self.rows_per_shard < 1:
            raise ConfigError("rows_per_shard", f"must be >= 1, got {self.rows_per_shard}")
        if self.max_docs < 0:
            raise ConfigError("max_docs", f"must be >= 0, got {self.max_docs}")


INPUTS: tuple[str, ...] = ()


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Validate the sources (before any work), then run the stage; returns the manifest."""
    from lmforge.data.sources import fingerprint, resolve_sources

    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/data)")
    specs = resolve_sources(cfg.sources, text_field=cfg.text_field)
    prints = [fingerprint(s) for s in specs]
    return run_stage(
        STAGE,
        cfg,
        out=cfg.out,
        inputs={},
        work=lambda c, ctx: curate(c, ctx, specs),
        version=VERSION,
        fingerprint={"sources": prints},
        force=force,
    )


def curate(cfg: Config, ctx: StageContext, specs: list[Any]) -> dict[str, float]:
    """Stream every source through the cleaner into train/val shards; write stats.json."""
    import itertools

    from lmforge.data.clean import Cleaner
    from lmforge.data.shards import ShardWriter, split_of
    from lmforge.data.sources import iter_documents
    from lmforge.log import progress

    problems: list[Any] = []
    rejects = RejectWriter(ctx.dir / "rejects") if cfg.write_rejects else None
    cleaner = Cleaner(on_drop=rejects.write if rejects else None)
    writers = {s: ShardWriter(ctx.dir / s, rows_per_shard=cfg.rows_per_shard) for s in ("train", "val")}
    split_docs = {"train": 0, "val": 0}
    split_bytes = {"train": 0, "val": 0}
    per_source: dict[str, int] = {}

    def documents():
        for spec in specs:
            yield from iter_documents(spec, problems)

    stream = documents()
    if cfg.max_docs:
        stream = itertools.islice(stream, cfg.max_docs)
    for doc in progress(cleaner(stream), description="cleaning documents"):
        split = split_of(doc.id, cfg.val_fraction, cfg.split_seed)
        writers[split].write(doc)
        split_docs[split] += 1
        split_bytes[split] += len(doc.text.encode("utf-8"))
        src = str(doc.metadata.get("source", ""))
        per_source[src] = per_source.get(src, 0) + 1
    for w in writers.values():
        w.close()
    if rejects:
        rejects.close()
    for p in problems[:20]:
        log.warning("bad record: %s", p)
    if len(problems) > 20:
        log.warning("... and %d more bad records (all listed in stats.json)", len(problems) - 20)
    if split_docs["train"] == 0:
        raise InputError("no documents survived cleaning; nothing to train on (see stats.json and rejects/)")
    if split_docs["val"] == 0:
        log.warning("no validation documents (val_fraction=%s); later stages need some", cfg.val_fraction)

    stats = cleaner.stats.to_dict()
    stats.update(
        splits={s: {"docs": split_docs[s], "bytes": split_bytes[s]} for s in split_docs},
        sources=per_source,
        bad_records=[str(p) for p in problems],
        bad_records_by_kind=_count_kinds(problems),
    )
    write_json_atomic(ctx.dir / "stats.json", stats)
    log.info(
        "kept %d of %d documents (%.2f MB); dropped %s; %d bad records",
        stats["docs_out"],
        stats["docs_in"],
        stats["bytes_out"] / 1e6,
        dict(stats["drops"]) or "none",
        len(problems),
    )
    metrics: dict[str, float] = {
        "docs_in": stats["docs_in"],
        "docs_out": stats["docs_out"],
        "bytes_in": stats["bytes_in"],
        "bytes_out": stats["bytes_out"],
        "train_docs": split_docs["train"],
        "val_docs": split_docs["val"],
        "train_bytes": split_bytes["train"],
        "val_bytes": split_bytes["val"],
        "bad_records": len(problems),
    }
    for reason, n in stats["drops"].items():
        metrics[f"dropped_{reason}"] = n
    return metrics


def _count_kinds(problems: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in problems:
        out[p.kind] = out.get(p.kind, 0) + 1
    return out


class RejectWriter:
    """Dropped documents as ``rejects/rejects.jsonl``: ``{"id", "reason", "source", "text"}`` per line."""

    def __init__(self, directory: Any):
        directory.mkdir(parents=True, exist_ok=True)
        self._fh = (directory / "rejects.jsonl").open("w", encoding="utf-8")

    def write(self, doc: Any, reason: str) -> None:
        record = {"id": doc.id, "reason": reason, "source": doc.metadata.get("source", ""), "text": doc.text}
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._fh.close()
