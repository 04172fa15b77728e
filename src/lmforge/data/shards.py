"""Train/val split by hash, and parquet shards of documents (columns ``id``, ``text``, ``source``).

A shard appears under its final name ``shard_00000.parquet`` only once it is completely written
(written as ``.shard_00000.parquet.tmp``, then renamed), so a reader never sees half a shard.
``ShardWriter`` writes a stream of documents; ``write_shard`` writes one shard from selected rows of
other parquet files (how the parallel pipeline assembles shards), ``take_rows`` reads such rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmforge.data.document import Document
from lmforge.errors import InputError

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
SHARD_GLOB = "shard_*.parquet"
_READ_BATCH_ROWS = 1024


def tail_split(doc: Document, val_fraction: float) -> list[Document]:
    """Cut one document into its first ``1 - val_fraction`` (train) and last ``val_fraction`` (val).

    The classic split of a single-file corpus (e.g. tiny-shakespeare: first 90% train, last 10% val):
    the cut is at character ``int(len(text) * (1 - val_fraction))``, as nanoGPT's prepare script does.
    The parts get ids ``<id>#train`` / ``<id>#val`` and ``metadata["split"]``; an empty part is left out.
    """
    cut = int(len(doc.text) * (1.0 - val_fraction))
    parts = []
    for split, text in (("train", doc.text[:cut]), ("val", doc.text[cut:])):
        if text:
            parts.append(Document(f"{doc.id}#{split}", text, {**doc.metadata, "split": split}))
    return parts


def split_of(doc_id: str, val_fraction: float, seed: int = 0) -> str:
    """Assign a document to ``"train"`` or ``"val"`` from a hash of ``(seed, doc_id)``.

    The same id always lands in the same split for a given seed and fraction, whatever the order or
    number of documents, and raising ``val_fraction`` only moves documents from train to val.

    Raises:
        ValueError: ``val_fraction`` is outside [0, 1].
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
    digest = hashlib.blake2b(
        f"{seed}\x00{doc_id}".encode("utf-8", errors="surrogatepass"), digest_size=8
    ).digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_fraction else "train"


def shard_name(index: int) -> str:
    """File name of shard number ``index``: ``shard_00000.parquet``."""
    return f"shard_{index:05d}.parquet"


class ShardWriter:
    """Write documents to ``out_dir/shard_NNNNN.parquet``, ``rows_per_shard`` rows each.

    Use as a context manager (or call ``close()``): the last, partial shard is written on close.
    Closing a writer that received no documents writes one empty ``shard_00000.parquet`` so readers
    always find a valid (possibly empty) dataset. If the context exits with an exception, the
    buffered rows are discarded and no partial shard is written.

    Args:
        out_dir: created if missing. Shards already in it (from an interrupted earlier attempt) are
            deleted first, so the directory never mixes two runs' shards.
        rows_per_shard: documents per shard (the last shard may hold fewer).
    """

    def __init__(self, out_dir: str | os.PathLike, rows_per_shard: int = 100_000):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.out_dir.glob(SHARD_GLOB))
        if stale:
            logger.warning("%s: deleting %d shard(s) of an earlier attempt", self.out_dir, len(stale))
        for path in stale:
            path.unlink()
        self.rows_per_shard = rows_per_shard
        self.shards: list[dict] = []  # [{"file": name, "rows": n, "bytes": text bytes}]
        self._rows: dict[str, list[str]] = {"id": [], "text": [], "source": []}
        self._closed = False

    @property
    def rows(self) -> int:
        """Documents written so far (including those still buffered)."""
        return sum(s["rows"] for s in self.shards) + len(self._rows["id"])

    def write(self, doc: Document) -> None:
        """Add one document; a shard is written each time ``rows_per_shard`` documents are buffered."""
        if self._closed:
            raise ValueError(f"ShardWriter for {self.out_dir} is closed")
        self._rows["id"].append(doc.id)
        self._rows["text"].append(doc.text)
        self._rows["source"].append(str(doc.metadata.get("source", "")))
        if len(self._rows["id"]) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        name = shard_name(len(self.shards))
        table = pa.table(self._rows, schema=SCHEMA)
        tmp = self.out_dir / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, self.out_dir / name)
        text_bytes = int(pc.sum(pc.binary_length(table["text"])).as_py() or 0)
        self.shards.append({"file": name, "rows": table.num_rows, "bytes": text_bytes})
        logger.debug("wrote %s (%d rows)", self.out_dir / name, table.num_rows)
        self._rows = {"id": [], "text": [], "source": []}

    def close(self) -> list[dict]:
        """Write the remaining rows; return ``[{"file", "rows", "bytes"}]`` per shard (bytes of text)."""
        if not self._closed:
            if self._rows["id"] or not self.shards:
                self._flush()
            self._closed = True
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True


def take_rows(path: str | os.PathLike, rows: np.ndarray, columns: list[str]) -> Iterator[pa.Table]:
    """Rows ``rows`` (ascending indices) of the parquet file ``path``, read one row group at a time."""
    pf = pq.ParquetFile(path)
    bounds = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
    group = np.searchsorted(bounds, rows, side="right") - 1
    for g in np.unique(group):
        yield pf.read_row_group(int(g), columns=columns).take(pa.array(rows[group == g] - bounds[g]))


def write_shard(
    path: str | os.PathLike, pieces: Iterable[tuple[str | os.PathLike, np.ndarray]], group_rows: int = 2048
) -> None:
    """Write shard ``path`` from ``(parquet file, ascending rows)`` pieces, in order; rename into place.

    The sources need the ``SCHEMA`` columns. Memory holds about ``group_rows`` rows (one row group).
    Without pieces the shard is empty but valid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        pending: list[pa.Table] = []
        rows = groups = 0
        for source, index in pieces:
            for table in take_rows(source, index, SCHEMA.names):
                pending.append(table)
                rows += table.num_rows
                if rows >= group_rows:
                    writer.write_table(pa.concat_tables(pending).cast(SCHEMA), row_group_size=rows)
                    pending, rows, groups = [], 0, groups + 1
        if pending or not groups:
            table = pa.concat_tables(pending).cast(SCHEMA) if pending else SCHEMA.empty_table()
            writer.write_table(table, row_group_size=max(rows, 1))
    os.replace(tmp, path)


def shard_files(shard_dir: str | os.PathLike) -> list[Path]:
    """The parquet shards of ``shard_dir`` in order, raising InputError if there are none."""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise InputError(
            f"{shard_dir}: no such directory; expected parquet shards ({SHARD_GLOB}) from the data stage"
        )
    files = sorted(shard_dir.glob(SHARD_GLOB))
    if not files:
        raise InputError(f"{shard_dir}: holds no {SHARD_GLOB} files; expected the output of the data stage")
    return files


def _batches(shard_dir: str | os.PathLike, columns: list[str]) -> Iterator[pa.RecordBatch]:
    for path in shard_files(shard_dir):
        try:
            pf = pq.ParquetFile(path)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise InputError(f"{path}: lacks column(s) {missing}; valid shards have {SCHEMA.names}")
            yield from pf.iter_batches(batch_size=_READ_BATCH_ROWS, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read parquet shard ({exc})") from exc


def iter_shard_texts(shard_dir: str | os.PathLike) -> Iterator[str]:
    """Stream the ``text`` column of every shard in ``shard_dir``, in order."""
    for batch in _batches(shard_dir, ["text"]):
        yield from batch.column(0).to_pylist()


def read_documents(shard_dir: str | os.PathLike) -> Iterator[Document]:
    """Stream the documents of every shard in ``shard_dir``, in order (``metadata["source"]`` set)."""
    for batch in _batches(shard_dir, ["id", "text", "source"]):
        ids, texts, sources = (batch.column(i).to_pylist() for i in range(3))
        for doc_id, text, source in zip(ids, texts, sources):
            yield Document(id=doc_id, text=text, metadata={"source": source})
