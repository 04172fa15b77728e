"""Stream documents out of text files: .txt, .md, .jsonl, .csv, .parquet, optionally .gz/.zst/.bz2.

One reader per format, all generators: only a plain-text file is held in memory whole (it is one
document); JSONL and CSV are read line by line and Parquet batch by batch. Faults that spoil one
record (a malformed JSON line, a missing text field, invalid UTF-8) never stop the read: they are
reported as a ``Problem`` naming ``file:line`` and the good records are kept. Faults that spoil the
whole file (no text column, a corrupt compressed stream) raise ``InputError``.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from lmforge.data.document import Document
from lmforge.errors import InputError

logger = logging.getLogger(__name__)

FORMATS = ("txt", "md", "jsonl", "csv", "parquet")
COMPRESSIONS = ("gz", "zst", "bz2")
_PARQUET_BATCH_ROWS = 1024
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Problem:
    """A record that could not be read as given (it was skipped, or repaired and kept).

    Args:
        file: the file, as named by the source spec.
        line: 1-based line (JSONL, CSV, text) or row (Parquet) number; None for the whole file.
        kind: ``malformed_json``, ``missing_field``, ``invalid_utf8`` or ``unparsable`` (builtin sources).
        message: what is wrong, and for skipped records what would have been valid.
    """

    file: str
    line: int | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


def report(problems: list[Problem] | None, problem: Problem) -> None:
    """Append ``problem`` to ``problems``, or log it as a warning when no list was given."""
    if problems is None:
        logger.warning("%s", problem)
    else:
        problems.append(problem)


def skip(problems: list[Problem] | None, file: str, line: int, why: str) -> None:
    """Report a record dropped because a field it needs is missing or invalid: ``missing_field``,
    ``"<why>; skipped"``."""
    report(problems, Problem(file, line, "missing_field", f"{why}; skipped"))


def split_name(path: Path) -> tuple[str | None, str | None]:
    """Return ``(format, compression)`` read from a file name; format is None when unsupported.

    ``a.jsonl.zst`` → ``("jsonl", "zst")``; ``a.md`` → ``("md", None)``; ``a.pdf`` → ``(None, None)``.
    """
    suffixes = [s.lower().lstrip(".") for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = suffixes.pop()
    fmt = suffixes[-1] if suffixes and suffixes[-1] in FORMATS else None
    return fmt, compression


@contextlib.contextmanager
def open_binary(path: Path, compression: str | None) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading, decompressing ``gz``, ``zst`` or ``bz2`` as a stream."""
    if compression is None:
        with open(path, "rb") as fh:
            yield fh
    elif compression == "gz":
        with gzip.open(path, "rb") as fh:
            yield fh
    elif compression == "bz2":
        with bz2.open(path, "rb") as fh:
            yield fh
    elif compression == "zst":
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield io.BufferedReader(reader)
    else:
        raise InputError(f"{path}: unsupported compression {compression!r}; valid: {', '.join(COMPRESSIONS)}")


# how bytes that are not UTF-8 are read: the codec → the note of the repair (byte offset)
REPAIRS = {
    "utf-8": "invalid UTF-8 at byte {}, replaced with U+FFFD",
    "cp1252": "not UTF-8 (byte {}); read as Windows-1252, kept",
}


def decode(
    raw: bytes, file: str, line: int | None, problems: list[Problem] | None, fallback: str = "utf-8"
) -> str:
    """Decode UTF-8; bytes that are not are read with ``fallback`` (``utf-8``: invalid bytes become
    U+FFFD; ``cp1252``: Windows-1252, for Latin-1 files) and the repair is reported as ``invalid_utf8``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report(problems, Problem(file, line, "invalid_utf8", REPAIRS[fallback].format(exc.start)))
        return raw.decode(fallback, errors="replace")


def _text_value(
    value: object, field: str, file: str, line: int, problems: list[Problem] | None
) -> str | None:
    """Return the record's text, or None (reported) when the field is missing or not a string."""
    if isinstance(value, bytes):
        value = decode(value, file, line, problems)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        report(
            problems, Problem(file, line, "missing_field", f"text field {field!r} is {what}; record skipped")
        )
        return None
    if _SURROGATE.search(value):
        report(problems, Problem(file, line, "invalid_utf8", "lone surrogate escape replaced with U+FFFD"))
        value = _SURROGATE.sub("\ufffd", value)
    return value


TEXT_SPLITS = ("none", "paragraphs", "lines")  # or "regex:PATTERN"


def text_splitter(split: str) -> re.Pattern[str] | None:
    """The separator pattern of a ``text_split`` setting (None for ``none``).

    Raises:
        ValueError: an unknown setting or a regex that does not compile.
    """
    if split == "none":
        return None
    if split == "paragraphs":
        return re.compile(r"\n[ \t\r\f\v]*\n\s*")  # one or more blank lines
    if split == "lines":
        return re.compile(r"\n")
    if split.startswith("regex:") and split != "regex:":
        try:
            return re.compile(split[len("regex:") :])
        except re.error as exc:
            raise ValueError(f"{split!r} is not a valid regular expression: {exc}") from None
    raise ValueError(f"unknown text split {split!r}; valid: {', '.join(TEXT_SPLITS)}, or regex:PATTERN")


def read_text(
    path: Path, compression: str | None, source: str, problems: list[Problem] | None, split: str = "none"
) -> Iterator[Document]:
    """Yield a .txt/.md file as one document (id: the path), or with ``split`` (``text_splitter``) one
    document per non-blank piece between separators (id ``path#N``, ``metadata["line"]`` where it starts),
    so deduplication, the train/val split and NSP pairs work per paragraph rather than per file."""
    name = str(path)
    with open_binary(path, compression) as fh:
        text = decode(fh.read(), name, None, problems).removeprefix("\ufeff")
    pattern = text_splitter(split)
    if pattern is None:
        yield Document(id=name, text=text, metadata={"source": source, "file": name})
        return
    start, line, part = 0, 1, 0
    for sep in [*pattern.finditer(text), None]:
        end = len(text) if sep is None else sep.start()
        piece = text[start:end]
        if piece.strip():
            meta = {
                "source": source,
                "file": name,
                "line": line + piece[: len(piece) - len(piece.lstrip())].count("\n"),
            }
            yield Document(id=f"{name}#{part}", text=piece.strip("\n"), metadata=meta)
            part += 1
        if sep is not None:
            line += text.count("\n", start, sep.end())
            start = sep.end()


def _lines(fh: BinaryIO, file: str, problems: list[Problem] | None) -> Iterator[str]:
    """Yield decoded lines (line endings kept), a leading byte-order mark dropped."""
    for number, raw in enumerate(fh, start=1):
        line = decode(raw, file, number, problems)
        yield line.removeprefix("\ufeff") if number == 1 else line


def read_jsonl(
    path: Path, compression: str | None, source: str, text_field: str, problems: list[Problem] | None
) -> Iterator[Document]:
    """Yield one document per JSON line (id: ``path:line``); bad lines are reported and skipped."""
    name = str(path)
    with open_binary(path, compression) as fh:
        for number, line in enumerate(_lines(fh, name, problems), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                report(
                    problems,
                    Problem(name, number, "malformed_json", f"malformed JSON ({exc.msg}); line skipped"),
                )
                continue
            if not isinstance(record, dict):
                report(
                    problems,
                    Problem(name, number, "malformed_json", "line is not a JSON object; line skipped"),
                )
                continue
            text = _text_value(record.get(text_field), text_field, name, number, problems)
            if text is not None:
                meta = {"source": source, "file": name, "line": number}
                yield Document(id=f"{name}:{number}", text=text, metadata=meta)


def _csv_column(header: list[str], text_field: str, file: str) -> int:
    if text_field not in header:
        raise InputError(f"{file}: no column {text_field!r}; columns are {header}")
    return header.index(text_field)


def read_csv(
    path: Path, compression: str | None, source: str, text_field: str, problems: list[Problem] | None
) -> Iterator[Document]:
    """Yield one document per CSV row (id: ``path#row``); short rows are reported and skipped.

    Raises Python's process-wide CSV field size limit so long documents fit in one field.
    """
    name = str(path)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open_binary(path, compression) as fh:
        reader = csv.reader(_lines(fh, name, problems))
        try:
            header = next(reader, None)
            if header is None:
                return
            column = _csv_column(header, text_field, name)
            for row_number, row in enumerate(reader, start=1):
                value = row[column] if column < len(row) else None
                text = _text_value(value, text_field, name, reader.line_num, problems)
                if text is not None:
                    meta = {"source": source, "file": name, "row": row_number}
                    yield Document(id=f"{name}#{row_number}", text=text, metadata=meta)
        except csv.Error as exc:
            raise InputError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from exc


def _parquet_column(pf: pq.ParquetFile, text_field: str, file: str) -> None:
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise InputError(f"{file}: no column {text_field!r}; columns are {schema.names}")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)):
        raise InputError(f"{file}: column {text_field!r} has type {kind}; valid: string or binary")


def read_parquet(
    path: Path, compression: str | None, source: str, text_field: str, problems: list[Problem] | None
) -> Iterator[Document]:
    """Yield one document per Parquet row (id: ``path#row``), batch by batch.

    A compressed Parquet file is first decompressed to a temporary file (Parquet needs seeking).
    """
    name = str(path)
    with contextlib.ExitStack() as stack:
        if compression is None:
            pf = pq.ParquetFile(path)
        else:
            spool = stack.enter_context(tempfile.TemporaryFile())
            with open_binary(path, compression) as fh:
                shutil.copyfileobj(fh, spool)
            spool.seek(0)
            pf = pq.ParquetFile(spool)
        _parquet_column(pf, text_field, name)
        row_number = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                row_number += 1
                text = _text_value(value, text_field, name, row_number, problems)
                if text is not None:
                    meta = {"source": source, "file": name, "row": row_number}
                    yield Document(id=f"{name}#{row_number}", text=text, metadata=meta)


def check_columns(path: Path, text_field: str) -> None:
    """Cheaply check that a CSV or uncompressed Parquet file has the text column (else InputError)."""
    fmt, compression = split_name(path)
    name = str(path)
    try:
        if fmt == "parquet" and compression is None:
            _parquet_column(pq.ParquetFile(path), text_field, name)
        elif fmt == "csv":
            with open_binary(path, compression) as fh:
                first = fh.readline()
            if first.strip():
                header = next(csv.reader([decode(first, name, 1, []).removeprefix("\ufeff")]))
                _csv_column(header, text_field, name)
    except (OSError, EOFError, zstandard.ZstdError, pa.ArrowException) as exc:
        raise InputError(f"{name}: cannot read ({exc})") from exc


def read_file(
    path: Path, source: str, text_field: str, problems: list[Problem] | None, text_split: str = "none"
) -> Iterator[Document]:
    """Yield the documents of one file of any supported format, raising InputError if it is unreadable.

    Args:
        path: the file; its name decides format and compression (see ``split_name``).
        source: the source spec the file came from, stored as ``metadata["source"]``.
        text_field: JSON key / column holding the text (JSONL, CSV, Parquet).
        problems: list collecting per-record problems; None logs them as warnings.
        text_split: how a .txt/.md file is cut into documents (``read_text``); other formats ignore it.
    """
    fmt, compression = split_name(path)
    try:
        if fmt in ("txt", "md", None):  # None: named without a known extension (.raw, none): plain text
            yield from read_text(path, compression, source, problems, text_split)
        elif fmt == "jsonl":
            yield from read_jsonl(path, compression, source, text_field, problems)
        elif fmt == "csv":
            yield from read_csv(path, compression, source, text_field, problems)
        else:
            yield from read_parquet(path, compression, source, text_field, problems)
    except (OSError, EOFError, zstandard.ZstdError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
