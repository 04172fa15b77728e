"""The curation pipeline: filter work units in parallel, deduplicate globally, write train/val shards.

Three passes, each resumable, over *work units* (planned and read by ``units``) (a group of small files, or a chunk of about
``unit_bytes`` of a builtin corpus or a big file, cut by the reader in the driver):

1. **Filter** (parallel, :func:`process_unit`): read → the configured steps (normalise, drop empty,
   quality, language, PII scrub, audit, decontamination: any ``step(docs, drop)``, see ``clean``) →
   ``work/units/<unit>/``: the kept documents (``docs.parquet``), their 128-bit text hashes
   (``hash.npy``), MinHash signatures (``sig.npy``) and split (``val.npy``), the unit's counts
   (``counts.json``) and, written last, ``DONE``. Dropped documents go to ``rejects/filtered/<unit>.jsonl``,
   unreadable records to ``rejects/bad_records/<unit>.jsonl``. A unit with ``DONE`` is never redone.
2. **Deduplicate** (global, in the driver, :func:`dedup.find_duplicates`): exact and near duplicates
   across every unit; the first document of each cluster in input order is kept.
3. **Write** (parallel, :func:`write_output`): ``train/`` and ``val/`` shards of ``rows_per_shard`` rows
   in input order (each shard is written whole and renamed into place, so a resumed run skips shards
   that exist) and ``rejects/duplicates/<unit>.jsonl`` naming the document each duplicate repeats.

Documents keep *input order* (sources as given, files sorted, records in file order; unit names
``SSSS-NNNNNN`` sort that way), so outputs depend on neither the workers nor the executor. Memory
is one unit per worker and, in pass 2, a few dozen bytes per document (never its text).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmforge.data.clean import Cleaner, Step, drop_empty
from lmforge.data.dedup import KEEP, REASONS, DedupConfig, Duplicates, MinHasher, find_duplicates, text_hash
from lmforge.data.document import Document
from lmforge.data.executor import Executor
from lmforge.data.readers import Problem
from lmforge.data.shards import shard_name, split_of, tail_split, take_rows, write_shard
from lmforge.data.sources import SourceSpec
from lmforge.data.units import (
    DONE,
    PART_SCHEMA,
    ROW_GROUP,
    Unit,
    check_readable,
    part_table,
    plan_units,
    read_chunk,
    read_files,
)
from lmforge.runstore import write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["Result", "Settings", "StepSpec", "Unit", "build_empty_filter", "check_readable", "plan_units"]
__all__ += ["process_unit", "read_files", "run_pipeline", "write_output"]

_OUT_GROUP = 2048  # rows per row group of an output shard
_EXAMPLES = 10  # example ids kept per drop reason
_BAD_EXAMPLES = 200  # bad records listed in stats.json (all of them are in rejects/bad_records/)


@dataclass(frozen=True)
class StepSpec:
    """One filtering step: ``build(config)`` returns the step, or None when it is switched off.

    ``build`` must be a module-level function (work units pickle it to other processes).
    """

    name: str
    build: Callable[[Any], Step | None]
    config: Any = None


@dataclass(frozen=True)
class Settings:
    """What every work unit needs (the same for all units of a run; picklable)."""

    steps: tuple[StepSpec, ...]
    dedup: DedupConfig
    out: str  # the stage directory: train/, val/, rejects/ and the scratch work/ go here
    val_fraction: float = 0.05
    split_seed: int = 0
    split: str = "hash"  # "hash": whole documents by id hash; "tail": the end of every document is val
    rows_per_shard: int = 50_000
    write_rejects: bool = True
    strict: bool = False  # a file that breaks part-way stops the run (else: reported, its read part kept)
    text_split: str = "none"  # how .txt/.md files are cut into documents (readers.read_text)

    @property
    def work(self) -> Path:
        return Path(self.out) / "work"


def build_empty_filter(_config: object = None) -> Step:
    """The ``drop_empty`` step (reason ``empty``), as a ``StepSpec.build`` function."""
    return drop_empty


# --------------------------------------------------------------------------------------------------
# pass 1: plan work units, filter them


class _JsonlWriter:
    """A JSONL file created on the first record, written as a temporary and renamed on ``close``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._fh: Any = None
        path.unlink(missing_ok=True)

    def write(self, record: dict) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self._tmp.open("w", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def reject(self, doc: Document, reason: str) -> None:
        """One dropped document: id (for files: ``path:line`` or ``path#row``), reason, source, text."""
        source = doc.metadata.get("source", "")
        self.write({"id": doc.id, "reason": reason, "source": source, "text": doc.text})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            os.replace(self._tmp, self.path)


class _PartWriter:
    """A unit's kept documents (``docs.parquet``) with their text hashes, signatures and split."""

    def __init__(self, unit_dir: Path, settings: Settings) -> None:
        self.dir = unit_dir
        self.settings = settings
        self.writer = pq.ParquetWriter(unit_dir / "docs.parquet", PART_SCHEMA, compression="zstd")
        near = settings.dedup
        self.minhasher = MinHasher(near.num_perm, near.shingle_words, near.seed) if near.near else None
        self.buffer: list[Document] = []
        self.hashes: list[np.ndarray] = []
        self.sigs: list[np.ndarray] = []
        self.val: list[np.ndarray] = []
        self.rows = 0

    def add(self, doc: Document) -> None:
        if self.settings.split == "tail":
            self.buffer.extend(tail_split(doc, self.settings.val_fraction))
        else:
            self.buffer.append(doc)
        if len(self.buffer) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        docs, self.buffer = self.buffer, []
        if not docs:
            return
        texts = [d.text for d in docs]
        self.writer.write_table(part_table(docs))
        digests = b"".join(text_hash(t) for t in texts)
        self.hashes.append(np.frombuffer(digests, dtype="<u8").reshape(-1, 2))
        if self.minhasher is not None:
            self.sigs.append(self.minhasher.signatures(texts))
        s = self.settings
        self.val.append(
            np.array(
                [
                    (d.metadata.get("split") or split_of(d.id, s.val_fraction, s.split_seed)) == "val"
                    for d in docs
                ]
            )
        )
        self.rows += len(docs)

    def close(self) -> None:
        self._flush()
        self.writer.close()
        width = self.settings.dedup.num_perm
        np.save(self.dir / "hash.npy", np.concatenate(self.hashes or [np.empty((0, 2), "<u8")]))
        np.save(self.dir / "val.npy", np.concatenate(self.val or [np.empty(0, bool)]))
        if self.minhasher is not None:
            np.save(self.dir / "sig.npy", np.concatenate(self.sigs or [np.empty((0, width), np.uint32)]))


# Steps built in this process, reused by every unit it runs: building may load a model or read eval
# sets. A step's counts() accumulate over its life, so a unit's counts are the difference.
_BUILT: dict[tuple[str, str, str], Step | None] = {}


def _steps(specs: Sequence[StepSpec]) -> list[tuple[str, Step]]:
    out = []
    for spec in specs:
        key = (spec.name, f"{spec.build.__module__}.{spec.build.__qualname__}", repr(spec.config))
        if key not in _BUILT:
            _BUILT[key] = spec.build(spec.config)
        if _BUILT[key] is not None:
            out.append((spec.name, _BUILT[key]))
    return out


@dataclass(frozen=True)
class UnitTask:
    unit: Unit
    settings: Settings


def process_unit(task: UnitTask) -> dict:
    """Pass 1 for one unit: read, run the steps, write its part; returns its counts (see module doc).

    A unit whose ``DONE`` marker exists returns its saved counts without doing anything.
    """
    unit, settings = task.unit, task.settings
    unit_dir = settings.work / "units" / unit.name
    if (unit_dir / DONE).is_file():
        return json.loads((unit_dir / "counts.json").read_text(encoding="utf-8"))
    shutil.rmtree(unit_dir, ignore_errors=True)
    unit_dir.mkdir(parents=True)
    problems: list[Problem] = []
    if unit.chunk:
        docs = read_chunk(Path(unit.chunk), problems)
    else:
        docs = read_files(
            unit.files, unit.source, unit.text_field, problems, settings.strict, settings.text_split
        )
    built = _steps(settings.steps)
    before = {name: dict(step.counts()) for name, step in built if hasattr(step, "counts")}
    rejects_dir = Path(settings.out) / "rejects"
    rejects = (
        _JsonlWriter(rejects_dir / "filtered" / f"{unit.name}.jsonl") if settings.write_rejects else None
    )
    cleaner = Cleaner(
        [step for _, step in built], on_drop=rejects.reject if rejects else None, names=[n for n, _ in built]
    )
    part = _PartWriter(unit_dir, settings)
    for doc in cleaner(docs):
        part.add(doc)
    part.close()
    if rejects is not None:
        rejects.close()
        bad = _JsonlWriter(rejects_dir / "bad_records" / f"{unit.name}.jsonl")
        for p in problems:
            bad.write({"file": p.file, "line": p.line, "kind": p.kind, "message": p.message})
        bad.close()
    counts = {
        "unit": unit.name,
        "clean": cleaner.stats.to_dict(),
        "step_counts": {
            n: {k: v - before[n].get(k, 0) for k, v in s.counts().items()} for n, s in built if n in before
        },
        "bad_records": [str(p) for p in problems[:_BAD_EXAMPLES]],
        "bad_records_by_kind": dict(Counter(p.kind for p in problems)),
        "kept": part.rows,
    }
    write_json_atomic(unit_dir / "counts.json", counts)
    write_json_atomic(unit_dir / DONE, {"unit": unit.name})  # the completion marker, last
    if unit.chunk:
        Path(unit.chunk).unlink(missing_ok=True)
    return counts


# --------------------------------------------------------------------------------------------------
# pass 3: write shards and duplicate rejects


@dataclass(frozen=True)
class ShardTask:
    """Output shard ``path``: rows ``rows`` (ascending) of each unit's ``docs.parquet``, in order."""

    path: str
    pieces: tuple[tuple[str, np.ndarray], ...]  # (unit dir, local rows)


@dataclass(frozen=True)
class RejectTask:
    """``rejects/duplicates/<unit>.jsonl``: rows dropped by dedup, with the id each one repeats."""

    path: str
    unit_dir: str
    rows: np.ndarray  # ascending local rows of the unit
    reasons: tuple[str, ...]  # per row
    targets: np.ndarray  # per row: global index of the document it repeats
    target_rows: tuple[tuple[str, np.ndarray], ...]  # np.unique(targets) as (unit dir, local rows) pieces


def write_output(task: ShardTask | RejectTask) -> dict:
    """Pass 3 for one shard or one unit's duplicate rejects; returns what it wrote.

    Shards: ``{"docs", "bytes", "sources": {source: docs}}``. An existing shard is complete (it was
    renamed into place) and identical to what would be written, so it is only counted.
    """
    if isinstance(task, RejectTask):
        return _write_rejects(task)
    path = Path(task.path)
    if not path.is_file():
        write_shard(path, [(Path(d) / "docs.parquet", rows) for d, rows in task.pieces], _OUT_GROUP)
    table = pq.read_table(path, columns=["text", "source"])
    sources = {str(k): int(v) for k, v in zip(*pc.value_counts(table["source"]).flatten())}
    return {
        "docs": table.num_rows,
        "bytes": int(pc.sum(pc.binary_length(table["text"])).as_py() or 0),
        "sources": sources,
    }


def _write_rejects(task: RejectTask) -> dict:
    unique_ids: list[str] = []
    for unit_dir, local in task.target_rows:
        for table in take_rows(Path(unit_dir) / "docs.parquet", local, ["id"]):
            unique_ids.extend(table.column(0).to_pylist())
    where = np.searchsorted(np.unique(task.targets), task.targets)
    target_ids = [unique_ids[i] for i in where]
    out = _JsonlWriter(Path(task.path))
    examples: dict[str, list[str]] = {}
    tables = take_rows(Path(task.unit_dir) / "docs.parquet", task.rows, ["id", "text", "source"])
    rows = (row for table in tables for row in table.to_pylist())
    for row, reason, target in zip(rows, task.reasons, target_ids):
        out.write({"id": row["id"], "reason": reason, "duplicate_of": target, **row})
        ids = examples.setdefault(reason, [])
        if len(ids) < _EXAMPLES:
            ids.append(row["id"])
    out.close()
    return {"examples": examples}


# --------------------------------------------------------------------------------------------------
# the whole pipeline


def _load(path: Path, mmap: bool) -> np.ndarray:
    array = np.load(path, mmap_mode="r" if mmap else None)
    return np.asarray(array) if array.size == 0 else array


def _group_rows(index: np.ndarray, offsets: np.ndarray, dirs: list[str]) -> list[tuple[str, np.ndarray]]:
    """Split ascending global row indices into ``(unit dir, local rows)`` pieces."""
    unit = np.searchsorted(offsets, index, side="right") - 1
    return [(dirs[u], index[unit == u] - offsets[u]) for u in np.unique(unit)]


@dataclass
class Result:
    """What :func:`run_pipeline` did."""

    units: list[dict]  # pass 1 counts (counts.json) per work unit, in input order
    duplicates: Duplicates  # pass 2's verdict on every document that passed the filters
    splits: dict[str, dict]  # {"train": {"docs", "bytes", "shards"}, "val": {...}} as written
    sources: dict[str, int]  # documents written per source spec
    duplicate_examples: dict[str, list[str]]  # first ids dropped per dedup reason (with rejects on)
    timings: dict[str, float]  # seconds per pass


def run_pipeline(
    specs: Sequence[SourceSpec],
    settings: Settings,
    executor: Executor,
    *,
    unit_bytes: int,
    max_docs: int = 0,
) -> Result:
    """Run the three passes into ``settings.out``.

    Re-running into a directory holding an interrupted attempt with the same settings skips the
    units marked done and the shards already written.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tasks = (
        UnitTask(u, settings) for u in plan_units(specs, settings, unit_bytes=unit_bytes, max_docs=max_docs)
    )
    counts = executor.map(process_unit, tasks, description="filtering")
    timings["filter_s"] = time.perf_counter() - start
    names = [c["unit"] for c in counts]
    dirs = [str(settings.work / "units" / n) for n in names]
    log.info("filtered %d work unit(s) in %.1fs", len(names), timings["filter_s"])

    start = time.perf_counter()
    kept = np.array([c["kept"] for c in counts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(kept)])
    hashes = np.concatenate([_load(Path(d) / "hash.npy", False) for d in dirs] or [np.empty((0, 2), "<u8")])
    val = np.concatenate([_load(Path(d) / "val.npy", False) for d in dirs] or [np.empty(0, bool)])
    sigs = [_load(Path(d) / "sig.npy", True) for d in dirs] if settings.dedup.near else None
    dups = find_duplicates(hashes, sigs, settings.dedup)
    timings["dedup_s"] = time.perf_counter() - start
    log.info("deduplicated %d documents in %.1fs: %s", len(hashes), timings["dedup_s"], dups.stats)

    start = time.perf_counter()
    out_tasks: list[ShardTask | RejectTask] = []
    shards_of: dict[str, int] = {}
    for split in ("train", "val"):
        index = np.flatnonzero((dups.reason == KEEP) & (val == (split == "val")))
        n_shards = max(1, math.ceil(len(index) / settings.rows_per_shard))
        shards_of[split] = n_shards
        for k in range(n_shards):
            rows = index[k * settings.rows_per_shard : (k + 1) * settings.rows_per_shard]
            path = Path(settings.out) / split / shard_name(k)
            out_tasks.append(ShardTask(str(path), tuple(_group_rows(rows, offsets, dirs))))
    if settings.write_rejects:
        for u, name in enumerate(names):
            rows = np.flatnonzero(dups.reason[offsets[u] : offsets[u + 1]] != KEEP)
            if len(rows):
                glob = rows + offsets[u]
                targets = dups.duplicate_of[glob]
                out_tasks.append(
                    RejectTask(
                        path=str(Path(settings.out) / "rejects" / "duplicates" / f"{name}.jsonl"),
                        unit_dir=dirs[u],
                        rows=rows,
                        reasons=tuple(REASONS[int(r)] for r in dups.reason[glob]),
                        targets=targets,
                        target_rows=tuple(_group_rows(np.unique(targets), offsets, dirs)),
                    )
                )
    results = executor.map(write_output, out_tasks, description="writing shards")
    timings["write_s"] = time.perf_counter() - start
    splits = {s: {"docs": 0, "bytes": 0, "shards": n} for s, n in shards_of.items()}
    sources: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for task, result in zip(out_tasks, results):
        if isinstance(task, ShardTask):
            split = splits[Path(task.path).parent.name]
            split["docs"] += result["docs"]
            split["bytes"] += result["bytes"]
            sources.update(result["sources"])
        else:
            for reason, ids in result["examples"].items():
                examples.setdefault(reason, []).extend(ids[: _EXAMPLES - len(examples.get(reason, []))])
    return Result(counts, dups, splits, dict(sources), examples, timings)
