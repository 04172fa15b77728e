"""Encode documents into flat binary token shards, and read them back as memory maps.

Layout of a token directory (see docs/architecture.md)::

    shard_00000.bin   tokens, little-endian uint16 (vocabulary < 65,536) or uint32, no header
    shard_00000.idx   document boundaries: little-endian uint64 offset of each document's first
                      token (its <|bos|>) within the shard
    index.json        {"dtype": "uint16", "vocab_size": V, "bos_id": 0, "eos_id": null,
                       "shards": [{"file": "shard_00000.bin", "doc_index": "shard_00000.idx",
                                   "tokens": N, "bytes": B, "docs": D}],
                       "tokens": N, "bytes": B, "docs": D}

Each document is stored as ``<|bos|>`` followed by its tokens, and ``<|eos|>`` after them when
``append_eos`` (then ``eos_id`` is set). Special-token text inside a document is encoded as plain
text, so ``bos_id`` marks document starts and nothing else. ``bytes`` counts the UTF-8 bytes of the
texts: loss in bits over a shard divided by its bytes is bits per byte, whatever the tokenizer.

Shards split only between documents, and hold at most ``tokens_per_shard`` tokens unless one
document alone is longer. The layout depends only on the texts, the tokenizer, ``append_eos`` and
``tokens_per_shard`` — not on ``workers``, ``batch_docs`` or the encode backend. Shards are written
under a temporary name and renamed when complete; ``index.json`` is written last, so its presence
marks a finished directory.

Encoding runs in parallel with at most ``2 * workers`` batches in flight: on a pool of spawned
processes with ``tokenizers`` batch encoding, or, for byte-level BPE with tiktoken installed, on a
pool of threads sharing a tiktoken encoder built from the same merges (``encoders.choose_backend``;
tiktoken releases the GIL, and threads save the processes' start-up — bench/tokenizer_bench.py
measures both).
"""

from __future__ import annotations

import bisect
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tokenizers import Tokenizer

from lmforge.errors import InputError
from lmforge.tokenizer.encoders import DocEncoder, choose_backend
from lmforge.tokenizer.train import load_tokenizer, special_id, tokenizer_file

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
SHARD_GLOB = "shard_*.bin"
DOC_INDEX_GLOB = "shard_*.idx"
DOC_INDEX_DTYPE = np.dtype("<u8")
# tokens [N], tokens per doc [D], bytes per doc [D]
Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]

_worker_encoder: DocEncoder | None = None  # set once per worker process by _init_worker
_worker_ends: tuple[int, int | None] = (0, None)  # (bos id, eos id or None)


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits (vocab_size < 65,536), else uint32."""
    return np.dtype("<u2") if vocab_size < 2**16 else np.dtype("<u4")


def pack_documents(
    ids: list[list[int]], texts: list[str], dtype: np.dtype, bos: int, eos: int | None = None
) -> Encoded:
    """Concatenate ``<|bos|>`` + ids (+ ``<|eos|>`` when ``eos`` is given) of each document.

    Returns:
        (tokens [sum of lengths], tokens per document [len(texts)], UTF-8 bytes per document [len(texts)]).
    """
    extra = 1 + (eos is not None)
    lengths = np.fromiter((len(d) + extra for d in ids), dtype=np.int64, count=len(ids))
    tail = [eos] if eos is not None else []
    tokens = np.fromiter(
        chain.from_iterable(chain((bos,), d, tail) for d in ids),
        dtype=dtype,
        count=int(lengths.sum()),
    )
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    return tokens, lengths, nbytes


def _init_worker(tok_file: str, backend: str, append_eos: bool) -> None:
    """Pool initializer: build the encoder once per worker; one thread each (the pool is the parallelism)."""
    global _worker_encoder, _worker_ends
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = load_tokenizer(tok_file)
    _worker_encoder = DocEncoder(tok, backend)
    _worker_ends = (special_id(tok, "bos"), special_id(tok, "eos") if append_eos else None)


def _encode_in_worker(texts: list[str], dtype: str) -> Encoded:
    assert _worker_encoder is not None, "_init_worker did not run"
    return pack_documents(_worker_encoder(texts), texts, np.dtype(dtype), *_worker_ends)


def _batches(texts: Iterable[str], batch_docs: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, batch_docs)):
        yield batch


def _encoded_batches(
    batches: Iterable[list[str]],
    tok: Tokenizer,
    tok_file: Path,
    dtype: np.dtype,
    *,
    workers: int,
    backend: str,
    append_eos: bool,
) -> Iterator[Encoded]:
    """Encode batches in order, at most ``2 * workers`` in flight.

    ``workers <= 1``: in this process (``tokenizers`` still uses its own threads). tiktoken: a pool of
    threads sharing one encoder (its Rust encode releases the GIL, so threads run in parallel and cost
    no process start-up). ``tokenizers``: a pool of spawned single-threaded processes.
    """
    bos, eos = special_id(tok, "bos"), special_id(tok, "eos") if append_eos else None
    if workers <= 1:
        encoder = DocEncoder(tok, backend)
        for batch in batches:
            yield pack_documents(encoder(batch), batch, dtype, bos, eos)
        return
    if backend == "tiktoken":
        encoder = DocEncoder(tok, backend)
        pool: Any = ThreadPoolExecutor(workers, thread_name_prefix="lmforge-encode")

        def submit(batch: list[str]) -> Callable[[], Encoded]:
            return pool.submit(lambda: pack_documents(encoder(batch), batch, dtype, bos, eos)).result

    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        pool = context.Pool(workers, initializer=_init_worker, initargs=(str(tok_file), backend, append_eos))

        def submit(batch: list[str]) -> Callable[[], Encoded]:
            return pool.apply_async(_encode_in_worker, (batch, dtype.str)).get

    with pool:
        pending: deque[Callable[[], Encoded]] = deque()
        for batch in batches:
            pending.append(submit(batch))
            if len(pending) >= 2 * workers:  # bound memory: at most 2 batches queued per worker
                yield pending.popleft()()
        while pending:
            yield pending.popleft()()


class _ShardSink:
    """Append encoded documents to shards of at most ``tokens_per_shard`` tokens, split between documents."""

    def __init__(self, out_dir: Path, dtype: np.dtype, tokens_per_shard: int):
        self.out_dir, self.dtype, self.tokens_per_shard = out_dir, dtype, tokens_per_shard
        self.shards: list[dict] = []
        self._fh: BinaryIO | None = None
        self._idx: BinaryIO | None = None
        self._current = {"tokens": 0, "bytes": 0, "docs": 0}

    def _name(self, suffix: str = ".bin") -> str:
        return f"shard_{len(self.shards):05d}{suffix}"

    def _tmp(self, suffix: str = ".bin") -> Path:
        return self.out_dir / f".{self._name(suffix)}.tmp"

    def _open(self) -> None:
        self._fh, self._idx = open(self._tmp(), "wb"), open(self._tmp(".idx"), "wb")

    def _close_shard(self) -> None:
        if self._fh is None:
            self._open()  # an empty shard
        assert self._fh is not None and self._idx is not None
        self._fh.close()
        self._idx.close()
        self._fh = self._idx = None
        name, doc_index = self._name(), self._name(".idx")
        os.replace(self._tmp(".idx"), self.out_dir / doc_index)
        os.replace(self._tmp(), self.out_dir / name)
        self.shards.append({"file": name, "doc_index": doc_index, **self._current})
        self._current = {"tokens": 0, "bytes": 0, "docs": 0}

    def add(self, tokens: np.ndarray, lengths: np.ndarray, nbytes: np.ndarray) -> None:
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        start, n_docs = 0, len(lengths)
        while start < n_docs:
            room = self.tokens_per_shard - self._current["tokens"]
            end = int(np.searchsorted(offsets, offsets[start] + room, side="right")) - 1
            if end <= start:
                if self._current["tokens"] > 0:
                    self._close_shard()
                    continue
                end = start + 1  # one document longer than a shard: it gets a shard of its own
            if self._fh is None:
                self._open()
            assert self._fh is not None and self._idx is not None
            self._fh.write(tokens[offsets[start] : offsets[end]].tobytes())
            starts = offsets[start:end] - offsets[start] + self._current["tokens"]
            self._idx.write(starts.astype(DOC_INDEX_DTYPE).tobytes())
            self._current["tokens"] += int(offsets[end] - offsets[start])
            self._current["bytes"] += int(nbytes[start:end].sum())
            self._current["docs"] += end - start
            start = end
            if self._current["tokens"] >= self.tokens_per_shard:
                self._close_shard()

    def finish(self) -> list[dict]:
        if self._fh is not None or not self.shards:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        for fh, suffix in ((self._fh, ".bin"), (self._idx, ".idx")):
            if fh is not None:
                fh.close()
                self._tmp(suffix).unlink(missing_ok=True)


def _prepare_dir(out_dir: Path) -> None:
    """Create ``out_dir``; delete shards, document indexes and index of an interrupted earlier attempt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(out_dir.glob(SHARD_GLOB)) + sorted(out_dir.glob(DOC_INDEX_GLOB))
    stale += [p for p in [out_dir / INDEX_FILE] if p.exists()]
    if stale:
        logger.warning("%s: deleting %d file(s) of an earlier attempt", out_dir, len(stale))
    for path in stale:
        path.unlink()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def encode_to_shards(
    texts: Iterable[str],
    tok_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 2,
    batch_docs: int = 256,
    tokens_per_shard: int = 50_000_000,
    progress: Callable[[int], None] | None = None,
    backend: str = "auto",
    append_eos: bool = False,
) -> dict:
    """Tokenise a stream of documents into ``out_dir`` (``shard_NNNNN.bin`` + ``.idx`` + ``index.json``).

    Args:
        texts: documents, streamed; at most ``2 * workers`` batches are held in memory.
        tok_path: ``tokenizer.json`` or its directory; each worker loads it once.
        out_dir: created if missing; shards and index of an earlier attempt in it are deleted first.
        workers: parallel encoders: threads for tiktoken, spawned processes for tokenizers (a calling
            script then needs the ``if __name__ == "__main__":`` guard); 1 encodes in this process.
        batch_docs: documents per task sent to a worker.
        tokens_per_shard: shard size limit in tokens (exceeded only by a single longer document).
        progress: called with the number of documents after each encoded batch (e.g. ``bar.update``).
        backend: ``auto`` (tiktoken when it reproduces the tokenizer on the first batch, else
            tokenizers), ``tokenizers`` or ``tiktoken``; the shards are the same either way.
        append_eos: end every document with ``<|eos|>`` as well.

    Returns:
        the index written to ``index.json``.

    Raises:
        InputError: the tokenizer is missing or invalid.
        ValueError: a size below 1 or an unknown backend.
    """
    if batch_docs < 1 or tokens_per_shard < 1:
        raise ValueError(
            f"batch_docs and tokens_per_shard must be >= 1, got {batch_docs}, {tokens_per_shard}"
        )
    tok_file = tokenizer_file(tok_path)
    tok = load_tokenizer(tok_file)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    bos, eos = special_id(tok, "bos"), special_id(tok, "eos") if append_eos else None
    batches = _batches(texts, batch_docs)
    first = next(batches, [])
    backend = choose_backend(tok, backend, first[:64])
    out_dir = Path(out_dir)
    _prepare_dir(out_dir)
    sink = _ShardSink(out_dir, dtype, tokens_per_shard)
    start = time.perf_counter()
    try:
        for tokens, lengths, nbytes in _encoded_batches(
            chain([first] if first else [], batches),
            tok,
            tok_file,
            dtype,
            workers=workers,
            backend=backend,
            append_eos=append_eos,
        ):
            sink.add(tokens, lengths, nbytes)
            if progress is not None:
                progress(len(lengths))
        shards = sink.finish()
    except BaseException:
        sink.abort()
        raise
    index = {
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "bos_id": bos,
        "eos_id": eos,
        "shards": shards,
        "tokens": sum(s["tokens"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "docs": sum(s["docs"] for s in shards),
    }
    _write_json(out_dir / INDEX_FILE, index)
    seconds = max(time.perf_counter() - start, 1e-9)
    logger.info(
        "%s: %d docs, %d tokens in %d shard(s); %.0f tokens/s, %.2f MB/s (%s, %d worker(s))",
        out_dir,
        index["docs"],
        index["tokens"],
        len(shards),
        index["tokens"] / seconds,
        index["bytes"] / 1e6 / seconds,
        backend,
        workers,
    )
    return index


def read_index(tokens_dir: str | os.PathLike) -> dict:
    """Read ``index.json`` and check every shard file exists with the size it declares.

    Raises:
        InputError: the index is missing or malformed, or a shard is missing or of the wrong size.
    """
    path = Path(tokens_dir) / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{path}: no token index; expected the tokenizer stage's tokens/<split>/ directory")
    try:
        index = json.loads(path.read_text())
        dtype_name = index["dtype"]
        shards = [(s["file"], int(s["tokens"])) for s in index["shards"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: malformed token index ({exc!r}); expected dtype and shards[].file/tokens"
        ) from exc
    if dtype_name not in ("uint16", "uint32"):
        raise InputError(f"{path}: dtype {dtype_name!r}; valid: uint16, uint32")
    itemsize = np.dtype(dtype_name).itemsize
    for name, n_tokens in shards:
        shard = path.parent / name
        size = shard.stat().st_size if shard.is_file() else None
        if size != n_tokens * itemsize:
            found = "missing" if size is None else f"{size} bytes"
            raise InputError(
                f"{shard}: {found}; {INDEX_FILE} declares {n_tokens} tokens = {n_tokens * itemsize} bytes"
            )
    return index


def open_shards(tokens_dir: str | os.PathLike) -> list[np.ndarray]:
    """Read-only memory maps of every shard, in order (an empty shard is an empty array)."""
    index = read_index(tokens_dir)
    dtype = np.dtype(index["dtype"]).newbyteorder("<")
    arrays = []
    for shard in index["shards"]:
        path = Path(tokens_dir) / shard["file"]
        arrays.append(np.memmap(path, dtype=dtype, mode="r") if shard["tokens"] else np.empty(0, dtype))
    return arrays


def open_tokens(tokens_dir: str | os.PathLike) -> np.ndarray:
    """The whole token stream as one array: a memory map for one shard, an in-memory copy for several.

    For large multi-shard streams prefer ``TokenStream`` (no copy).
    """
    arrays = open_shards(tokens_dir)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class TokenStream:
    """The concatenation of a directory's shards, read by position without copying whole shards."""

    def __init__(self, tokens_dir: str | os.PathLike):
        self.tokens_dir = Path(tokens_dir)
        self.shards = [a for a in open_shards(tokens_dir) if len(a)]
        self.starts = [0]
        for shard in self.shards:
            self.starts.append(self.starts[-1] + len(shard))

    def __len__(self) -> int:
        return self.starts[-1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream (a copy only when the range crosses shards)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"range [{start}, {stop}) outside a stream of {len(self)} tokens")
        if start == stop:
            return np.empty(0, self.shards[0].dtype if self.shards else np.dtype("<u2"))
        i = bisect.bisect_right(self.starts, start) - 1
        pieces = []
        while start < stop:
            offset = start - self.starts[i]
            take = min(stop - start, len(self.shards[i]) - offset)
            pieces.append(self.shards[i][offset : offset + take])
            start += take
            i += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def document_starts(tokens_dir: str | os.PathLike) -> np.ndarray:
    """Stream offset of every document's first token (its ``<|bos|>``), int64 [docs], ascending.

    Read from the shards' ``.idx`` files; for a directory written before they existed, found by
    scanning for ``<|bos|>`` (exact: document text never encodes to it).

    Raises:
        InputError: an ``.idx`` file has the wrong size or points outside its shard.
    """
    tokens_dir = Path(tokens_dir)
    index = read_index(tokens_dir)
    arrays = open_shards(tokens_dir)
    out, base = [], 0
    for shard, tokens in zip(index["shards"], arrays):
        name = shard.get("doc_index")
        if name:
            path = tokens_dir / name
            size = path.stat().st_size if path.is_file() else None
            if size != shard["docs"] * DOC_INDEX_DTYPE.itemsize:
                raise InputError(f"{path}: {size} bytes; {INDEX_FILE} declares {shard['docs']} documents")
            local = np.fromfile(path, dtype=DOC_INDEX_DTYPE).astype(np.int64)
            if len(local) and (local[-1] >= len(tokens) or (np.diff(local) <= 0).any()):
                raise InputError(f"{path}: document offsets are not ascending within the shard")
        else:
            local = np.flatnonzero(tokens == index.get("bos_id", 0)).astype(np.int64)
        out.append(local + base)
        base += len(tokens)
    return np.concatenate(out) if out else np.empty(0, np.int64)
