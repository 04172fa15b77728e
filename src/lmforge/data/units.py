"""Work units of the curation pipeline: plan them, check inputs are readable, read them.

A unit is a group of small files, or a chunk of about ``unit_bytes`` of a builtin corpus or a big
file cut by the reader in the driver and stored as a parquet part under ``work/input/`` (with the bad
records met while reading it). ``settings`` is the pipeline's ``Settings`` (its ``work`` directory).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data.builtin import iter_builtin
from lmforge.data.document import Document
from lmforge.data.readers import Problem, open_binary, read_file, split_name
from lmforge.data.sources import SourceSpec, iter_task
from lmforge.errors import InputError

DONE = "DONE"
PART_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("meta", pa.string())]
)
PROBLEMS_KEY = b"lmforge.problems"
SNIFF_BYTES = 8192
ROW_GROUP = 512  # documents per row group of a unit's docs.parquet (and per signature batch)


@dataclass(frozen=True)
class Unit:
    """A piece of input processed by one worker: ``files`` read in order, or a ``chunk`` cut by the driver."""

    name: str
    source: str
    text_field: str = "text"
    files: tuple[str, ...] = ()
    chunk: str = ""


def sniff(path: Path) -> bytes:
    fmt, compression = split_name(path)
    if fmt == "parquet":
        return b""
    with open_binary(path, compression) as fh:
        return fh.read(SNIFF_BYTES)


def check_readable(specs: Sequence[SourceSpec], skipped: list[Problem] | None = None) -> list[SourceSpec]:
    """Open every input file and read its first bytes (decompressing), before any work starts.

    Returns ``specs``; with ``skipped`` given, without the files that cannot be read (each appended to
    ``skipped`` as an ``unreadable_file`` problem) and without the file sources left with no file.

    Raises:
        InputError: (``skipped`` None) listing every file that cannot be opened or decompressed.
    """
    bad: list[Problem] = []
    kept = []
    for spec in specs:
        files = []
        for path in spec.files:
            try:
                sniff(path)
                files.append(path)
            except Exception as exc:  # noqa: BLE001 - any failure here means "unreadable"
                bad.append(
                    Problem(str(path), None, "unreadable_file", f"cannot read ({type(exc).__name__}: {exc})")
                )
        if files or not spec.files:
            kept.append(dataclasses.replace(spec, files=tuple(files)))
    if bad and skipped is None:
        raise InputError("unreadable input files:\n  " + "\n  ".join(map(str, bad)))
    if skipped is None:
        return list(specs)
    skipped.extend(bad)
    return kept


def read_files(
    files: Iterable[str | Path],
    source: str,
    text_field: str,
    problems: list[Problem],
    strict: bool = False,
    text_split: str = "none",
) -> Iterator[Document]:
    """Stream the documents of ``files``; empty and binary files are reported in ``problems`` and skipped.

    A file is binary when its first 8 KiB (decompressed) hold a NUL byte (the heuristic of git and
    grep); Parquet files are exempt. A file that breaks part-way (a corrupt or truncated compressed
    stream fails only where it is met: gzip checks its CRC at the very end) is reported as a
    ``truncated_file`` problem at the first line (row) not read, and the documents read before it are
    kept; with ``strict`` it raises instead, as does a file that can no longer be opened.

    Raises:
        InputError: (``strict``) a file cannot be read to its end.
    """
    for name in files:
        path = Path(name)
        try:
            head = sniff(path) if path.stat().st_size else None
        except Exception as exc:  # noqa: BLE001 - changed or removed since it was checked
            if strict:
                raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
            problems.append(Problem(str(path), None, "unreadable_file", f"cannot read ({exc}); skipped"))
            continue
        if head is None:
            problems.append(Problem(str(path), None, "empty_file", "empty file; skipped"))
            continue
        if b"\x00" in head:
            problems.append(Problem(str(path), None, "binary_file", "binary file (NUL bytes); skipped"))
            continue
        before, count, last = len(problems), 0, 0
        try:
            for doc in read_file(path, source, text_field, problems, text_split):
                count += 1
                last = int(doc.metadata.get("line", doc.metadata.get("row", 0)))
                yield doc
        except InputError as exc:
            if strict:
                raise
            why = str(exc).removeprefix(f"{path}: ")
            kept = f"the {count} documents before it are kept" if count else "nothing was read from it"
            problems.append(
                Problem(str(path), last + 1, "truncated_file", f"file breaks here ({why}); {kept}")
            )
            continue
        if count == 0 and len(problems) == before:
            problems.append(Problem(str(path), None, "empty_file", "file holds no documents"))


def part_table(docs: list[Document]) -> pa.Table:
    """Documents as a ``PART_SCHEMA`` table (metadata other than ``source`` as JSON in ``meta``)."""
    columns = {
        "id": [d.id for d in docs],
        "text": [d.text for d in docs],
        "source": [str(d.metadata.get("source", "")) for d in docs],
        "meta": [
            json.dumps({k: v for k, v in d.metadata.items() if k != "source"}, default=str) for d in docs
        ],
    }
    return pa.table(columns, schema=PART_SCHEMA)


def write_chunk(path: Path, docs: list[Document], problems: list[Problem]) -> None:
    problem_rows = json.dumps([dataclasses.astuple(p) for p in problems])
    table = part_table(docs).replace_schema_metadata({PROBLEMS_KEY: problem_rows})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def read_chunk(path: Path, problems: list[Problem]) -> Iterator[Document]:
    pf = pq.ParquetFile(path)
    stored = (pf.schema_arrow.metadata or {}).get(PROBLEMS_KEY, b"[]")
    problems.extend(Problem(*p) for p in json.loads(stored))
    for batch in pf.iter_batches(batch_size=ROW_GROUP):
        for doc_id, text, source, meta in zip(*(c.to_pylist() for c in batch.columns)):
            yield Document(id=doc_id, text=text, metadata={"source": source, **json.loads(meta)})


def plan_units(
    specs: Sequence[SourceSpec], settings: Any, *, unit_bytes: int, max_docs: int = 0
) -> Iterator[Unit]:
    """Yield the work units of ``specs`` in input order, cutting chunks as it goes.

    Files up to ``unit_bytes`` are grouped into units of at most that size and read by the workers.
    Builtin corpora, ``task:`` sources, larger files, and everything when ``max_docs`` is set are read here, in the
    driver, and cut into parquet chunks of about ``unit_bytes`` (``max_docs`` then stops the read
    after that many documents). A chunk whose unit is already done is not written again.
    """
    budget = [max_docs] if max_docs else None
    for s, spec in enumerate(specs):
        names = (f"{s:04d}-{i:06d}" for i in itertools.count())
        if spec.builtin is not None or spec.task is not None or budget is not None:
            problems: list[Problem] = []
            if spec.builtin is not None:
                docs = iter_builtin(spec.builtin, spec.spec, problems)
            elif spec.task is not None:
                docs = iter_task(spec)
            else:
                docs = read_files(
                    spec.files, spec.spec, spec.text_field, problems, settings.strict, settings.text_split
                )
            yield from _cut(docs, problems, names, spec, settings, unit_bytes, budget)
            if budget is not None and budget[0] <= 0:
                return
            continue
        group: list[str] = []
        size = 0
        for path in spec.files:
            file_size = path.stat().st_size
            if group and (size + file_size > unit_bytes or file_size > unit_bytes):
                yield Unit(next(names), spec.spec, spec.text_field, files=tuple(group))
                group, size = [], 0
            if file_size > unit_bytes:
                problems = []
                docs = read_files(
                    [path], spec.spec, spec.text_field, problems, settings.strict, settings.text_split
                )
                yield from _cut(docs, problems, names, spec, settings, unit_bytes, None)
            else:
                group.append(str(path))
                size += file_size
        if group:
            yield Unit(next(names), spec.spec, spec.text_field, files=tuple(group))


def _cut(
    docs: Iterable[Document],
    problems: list[Problem],
    names: Iterator[str],
    spec: SourceSpec,
    settings: Any,
    unit_bytes: int,
    budget: list[int] | None,
) -> Iterator[Unit]:
    buffer: list[Document] = []
    size = 0
    cut = 0

    def flush() -> Unit:
        name = next(names)
        chunk = settings.work / "input" / f"{name}.parquet"
        if not (settings.work / "units" / name / DONE).is_file():
            write_chunk(chunk, buffer, problems)
        problems.clear()
        return Unit(name, spec.spec, spec.text_field, chunk=str(chunk))

    for doc in docs:
        if budget is not None:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        buffer.append(doc)
        size += len(doc.text)
        if size >= unit_bytes:
            yield flush()
            buffer, size, cut = [], 0, cut + 1
    if buffer or problems or cut == 0:
        yield flush()
