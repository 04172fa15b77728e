"""Curate text: read inputs, filter, scrub, deduplicate, and write train/val parquet shards.

Inputs are validated before any work: ``builtin:python-docs`` (the Python language reference and
standard-library docstrings every CPython holds), ``builtin:python-code`` (the standard library's
source), or files, directories and globs of txt / md / jsonl / parquet / csv, optionally .gz / .zst /
.bz2. Every document is normalised, then goes through the quality, language, PII, audit and
decontamination steps, then exact and near-duplicate removal across the whole corpus (MinHash + LSH);
work units run in parallel on local processes (``--executor ray`` for a Ray cluster). Every dropped
document is counted by reason in ``stats.json`` and written to ``rejects/``; bad records (binary or
empty files, invalid UTF-8, malformed JSON lines, missing fields) are reported with file and line and
the run continues. Bad sources (a glob matching nothing, a directory without supported files, a file
that cannot be opened or decompressed) are skipped with their reason (``skipped_sources``); a file
that breaks part-way keeps the documents read before the break (``truncated_file``); ``strict``
stops at either instead. Documents go to train or val by a hash of their id. An interrupted run resumes:
finished work units and shards are not redone.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, above, at_least, fields_from, opt
from lmforge.data.audit import AuditConfig
from lmforge.data.decontam import DecontamConfig
from lmforge.data.dedup import REASONS, DedupConfig
from lmforge.data.langid import LangConfig
from lmforge.data.normalize import NormalizeConfig
from lmforge.data.pii import PIIConfig
from lmforge.data.quality import QualityConfig
from lmforge.data.readers import Problem
from lmforge.errors import InputError
from lmforge.runstore import StageContext, resolve_ref, run_stage, write_json_atomic

log = logging.getLogger(__name__)

STAGE = "data"
VERSION = 2
_EXAMPLES = 10
_BAD_EXAMPLES = 200


@dataclass
class Config:
    """Options of ``lmforge data``."""

    input: list[str] = opt(["builtin:python-docs"], "builtin:NAME, files, directories or globs to read")
    text_field: str = opt("text", "JSON key / column holding the text in jsonl, csv and parquet files")
    out: str = opt("", "output stage directory", path=True)
    val_fraction: float = opt(0.05, "fraction of documents held out for validation (by id hash)")
    split_seed: int = opt(0, "seed of the train/val split hash")
    split: Literal["hash", "tail"] = opt(
        "hash", "hash: whole documents by id hash; tail: the last val_fraction of every document is val"
    )
    text_split: str = opt(
        "none",
        "how a .txt/.md file becomes documents: none (the whole file), paragraphs (blank lines), lines, or"
        " regex:PATTERN (the separator); jsonl/csv/parquet records are documents already",
    )
    rows_per_shard: int = opt(50_000, "documents per parquet shard")
    max_docs: int = opt(0, "stop after this many input documents (0 = all); reading is then serial")
    write_rejects: bool = opt(True, "write dropped documents and bad records with their reason to rejects/")
    strict: bool = opt(
        False,
        "stop at a bad source (glob matching nothing, empty directory, unreadable or corrupt file) instead"
        " of skipping it with its reason (stats.json skipped_sources) and going on with the good ones",
    )
    # how the work is run does not change the output, so these three stay out of the cache key
    executor: Literal["local", "ray"] = opt(
        "local", "local: worker processes on this machine; ray: tasks on a Ray cluster", cache=False
    )
    workers: int = opt(
        0, "local worker processes, or CPUs of a local Ray instance (0 = all CPUs)", cache=False
    )
    ray_address: str = opt("", "Ray cluster to join (e.g. auto); empty starts a local Ray", cache=False)
    unit_mb: float = opt(1.0, "work unit size in MB: smaller files are grouped, larger ones cut")
    normalize: NormalizeConfig = opt(NormalizeConfig(), "text normalisation")
    quality: QualityConfig = opt(QualityConfig(), "heuristic quality filter")
    lang: LangConfig = opt(LangConfig(), "language identification and filter")
    pii: PIIConfig = opt(PIIConfig(), "personal data and secrets scrubbing")
    audit: AuditConfig = opt(AuditConfig(), "representation audit (group mentions) and blocklist")
    decontam: DecontamConfig = opt(DecontamConfig(), "drop documents overlapping evaluation sets")
    dedup: DedupConfig = opt(DedupConfig(), "exact and near-duplicate removal")

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("input", "at least one input is required (e.g. builtin:python-docs)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        at_least(self, 1, "rows_per_shard")
        at_least(self, 0, "max_docs")
        if self.workers < 0:
            raise ConfigError("workers", f"must be >= 0 (0 = all CPUs), got {self.workers}")
        above(self, 0, "unit_mb")
        from lmforge.data.readers import text_splitter

        try:
            text_splitter(self.text_split)
        except ValueError as exc:
            raise ConfigError("text_split", str(exc)) from None


INPUTS = ("input",)  # an "@stage/file" input is a file another stage of the run writes (align.split's text)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Validate and open every input (before any work), then run the stage; returns the manifest."""
    from lmforge.data.pipeline import check_readable
    from lmforge.data.sources import fingerprint, resolve_sources
    from lmforge.eval.corpus import TASK_SOURCE

    skipped: list[Problem] | None = None if cfg.strict else []
    sources = [str(resolve_ref(s, Path(cfg.out))) if s.startswith("@") else s for s in cfg.input]
    specs = check_readable(
        resolve_sources(sources, text_field=cfg.text_field, skipped=skipped, tasks=TASK_SOURCE), skipped
    )
    if not specs:
        raise InputError(
            "input: every source is bad, nothing to read:\n  " + "\n  ".join(map(str, skipped or []))
        )
    for problem in skipped or []:
        log.warning("skipped source: %s", problem)
    for step in steps(cfg):  # building checks the steps' own files (eval sets, blocklists)
        step.build(step.config)
    # A file another stage of the run wrote is an input by content (so a copied or moved run directory
    # stays cached); other sources are fingerprinted by path, size and mtime.
    refs = {f"input[{i}]": s for i, s in enumerate(cfg.input) if s.startswith("@")}
    produced = {resolve_ref(s, Path(cfg.out)).resolve() for s in refs.values()}
    prints = [s for s in specs if not s.files or not {Path(f).resolve() for f in s.files} <= produced]
    prints = [fingerprint(s) for s in prints]
    return run_stage(
        STAGE,
        cfg,
        out=cfg.out,
        inputs=refs,
        work=lambda c, ctx: curate(c, ctx, specs, skipped or []),
        version=VERSION,
        fingerprint={"sources": prints, "skipped": [str(p) for p in skipped or []]},
        force=force,
    )


def steps(cfg: Config) -> tuple[Any, ...]:
    """The filtering steps of pass 1, in order."""
    from lmforge.data import audit, decontam, langid, normalize, pii, quality
    from lmforge.data.pipeline import StepSpec, build_empty_filter

    return (
        StepSpec("normalize", normalize.build, cfg.normalize),
        StepSpec("empty", build_empty_filter),
        StepSpec("quality", quality.build, cfg.quality),
        StepSpec("lang", langid.build, cfg.lang),
        StepSpec("pii", pii.build, cfg.pii),
        StepSpec("audit", audit.build, cfg.audit),
        StepSpec("decontam", decontam.build, cfg.decontam),
    )


def curate(cfg: Config, ctx: StageContext, specs: list[Any], skipped: list[Problem]) -> dict[str, float]:
    """Run the pipeline into ``ctx.dir`` (resuming an interrupted attempt); write stats.json, with the
    ``skipped`` sources (found bad before the run) and their reasons."""
    from lmforge.data.executor import make_executor
    from lmforge.data.pipeline import Settings, run_pipeline

    settings = fields_from(cfg, Settings, steps=steps(cfg), out=str(ctx.dir))
    if not ctx.resumed:
        for name in ("work", "train", "val", "rejects"):
            shutil.rmtree(ctx.dir / name, ignore_errors=True)
    with make_executor(cfg.executor, cfg.workers, cfg.ray_address) as executor:
        result = run_pipeline(
            specs, settings, executor, unit_bytes=int(cfg.unit_mb * 1e6), max_docs=cfg.max_docs
        )
    stats = assemble_stats(result)
    stats["skipped_sources"] = [{"source": p.file, "kind": p.kind, "reason": p.message} for p in skipped]
    stats["skipped_sources_by_kind"] = dict(sorted(Counter(p.kind for p in skipped).items()))
    stats["text_split"] = cfg.text_split  # what a .txt/.md file was cut into (docs_in counts the pieces)
    write_json_atomic(ctx.dir / "stats.json", stats)
    shutil.rmtree(settings.work, ignore_errors=True)
    for line in stats["bad_records"][:20]:
        log.warning("bad record: %s", line)
    if stats["bad_records_total"] > 20:
        log.warning(
            "... %d bad records in all (stats.json, rejects/bad_records/)", stats["bad_records_total"]
        )
    log.info(
        "kept %d of %d documents (%.2f of %.2f MB); dropped %s; %d bad records",
        stats["docs_out"],
        stats["docs_in"],
        stats["bytes_out"] / 1e6,
        stats["bytes_in"] / 1e6,
        stats["drops"] or "none",
        stats["bad_records_total"],
    )
    splits = stats["splits"]
    if splits["train"]["docs"] == 0:
        raise InputError("no documents survived curation; nothing to train on (see stats.json and rejects/)")
    if splits["val"]["docs"] == 0:
        log.warning("no validation documents (val_fraction=%s); later stages need some", cfg.val_fraction)
    return metrics_of(stats, result.timings, executor.workers)


def assemble_stats(result: Any) -> dict[str, Any]:
    """``stats.json``: totals, per-step documents and bytes, drops by reason (with example ids), step
    counts (PII by kind, languages, audit), duplicate clusters, splits, sources and bad records."""
    docs_in = bytes_in = 0
    drops: Counter = Counter()
    examples: dict[str, list[str]] = {}
    steps_out: dict[str, dict] = {}
    bad_kinds: Counter = Counter()
    bad: list[str] = []

    def example(reason: str, ids: list[str]) -> None:
        have = examples.setdefault(reason, [])
        have.extend(ids[: _EXAMPLES - len(have)])

    for unit in result.units:
        clean = unit["clean"]
        docs_in += clean["docs_in"]
        bytes_in += clean["bytes_in"]
        drops.update(clean["drops"])
        for reason, ids in clean["dropped_ids"].items():
            example(reason, ids)
        for s in clean["steps"]:
            into = steps_out.setdefault(
                s["step"], {"step": s["step"], "drops": Counter(), "counts": Counter()}
            )
            for key in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
                into[key] = into.get(key, 0) + s[key]
            into["drops"].update(s["drops"])
            into["counts"].update(unit["step_counts"].get(s["step"], {}))
        bad_kinds.update(unit["bad_records_by_kind"])
        bad.extend(unit["bad_records"][: _BAD_EXAMPLES - len(bad)])
    dups = result.duplicates
    dedup_drops = {
        reason: int((dups.reason == code).sum())
        for code, reason in sorted(REASONS.items())
        if (dups.reason == code).any()
    }
    drops.update(dedup_drops)
    for reason, ids in result.duplicate_examples.items():
        example(reason, ids)
    docs_out = sum(s["docs"] for s in result.splits.values())
    bytes_out = sum(s["bytes"] for s in result.splits.values())
    step_list = [
        {**s, "drops": dict(sorted(s["drops"].items())), "counts": dict(sorted(s["counts"].items()))}
        for s in steps_out.values()
    ]
    step_list.append(
        {
            "step": "dedup",
            "docs_in": int(len(dups.reason)),
            "docs_out": docs_out,
            "bytes_in": step_list[-1]["bytes_out"] if step_list else bytes_in,
            "bytes_out": bytes_out,
            "drops": dedup_drops,
            "counts": {},
        }
    )
    return {
        "docs_in": docs_in,
        "docs_out": docs_out,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "drops": dict(sorted(drops.items())),
        "drop_examples": dict(sorted(examples.items())),
        "steps": step_list,
        "duplicates": dups.stats,
        "splits": result.splits,
        "sources": result.sources,
        "units": len(result.units),
        "bad_records_by_kind": dict(sorted(bad_kinds.items())),
        "bad_records_total": sum(bad_kinds.values()),
        "bad_records": bad,
    }


def metrics_of(stats: dict[str, Any], timings: dict[str, float], workers: int) -> dict[str, float]:
    """Flat manifest metrics: totals, ``dropped_<reason>``, step counts (``pii_<kind>``, ``lang_<code>``,
    ...), duplicate clusters, bad records, split sizes and pass timings."""
    metrics: dict[str, float] = {k: stats[k] for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")}
    for reason, n in stats["drops"].items():
        metrics[f"dropped_{reason}"] = n
    for step in stats["steps"]:
        for key, n in step["counts"].items():
            if isinstance(n, (int, float)):
                metrics[key if key.startswith(step["step"] + "_") else f"{step['step']}_{key}"] = n
    for kind in ("exact", "near"):
        if kind in stats["duplicates"]:
            metrics[f"{kind}_duplicate_clusters"] = stats["duplicates"][kind]["clusters"]
    metrics["bad_records"] = stats["bad_records_total"]
    metrics["skipped_sources"] = len(stats.get("skipped_sources", []))
    metrics["truncated_files"] = stats["bad_records_by_kind"].get("truncated_file", 0)
    for split, s in stats["splits"].items():
        metrics[f"{split}_docs"] = s["docs"]
        metrics[f"{split}_bytes"] = s["bytes"]
    metrics["units"] = stats["units"]
    metrics["workers"] = workers
    for name, seconds in timings.items():
        metrics[f"time_{name}"] = round(seconds, 3)
    return metrics
