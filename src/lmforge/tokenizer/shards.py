"""Encode documents into flat binary token shards, and read them back as memory maps.

Layout of a token directory (see docs/architecture.md)::

    shard_00000.bin   tokens, little-endian uint16 (vocabulary < 65,536) or uint32, no header
    index.json        {"dtype": "uint16", "vocab_size": V,
                       "shards": [{"file": "shard_00000.bin", "tokens": N, "bytes": B, "docs": D}],
                       "tokens": N, "bytes": B, "docs": D}

Each document is stored as ``<|bos|>`` followed by its tokens; ``bytes`` counts the UTF-8 bytes of
the texts. Shards split only between documents, and hold at most ``tokens_per_shard`` tokens unless
one document alone is longer. The layout depends only on the texts, the tokenizer and
``tokens_per_shard`` — not on ``workers`` or ``batch_docs``. Shards are written under a temporary
name and renamed when complete; ``index.json`` is written last, so its presence marks a finished
directory.
"""

from __future__ import annotations

import bisect
import json
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tokenizers import Tokenizer

from lmforge.errors import InputError
from lmforge.tokenizer.train import load_tokenizer, special_id, tokenizer_file

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
SHARD_GLOB = "shard_*.bin"
Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # tokens [N], tokens per doc [D], bytes per doc [D]

_worker_tokenizer: Tokenizer | None = None  # set once per worker process by _init_worker


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits (vocab_size < 65,536), else uint32."""
    return np.dtype("<u2") if vocab_size < 2**16 else np.dtype("<u4")


def encode_texts(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> Encoded:
    """Encode ``texts`` as ``<|bos|>`` + ids each, concatenated.

    Returns:
        (tokens [sum of lengths], tokens per document [len(texts)], UTF-8 bytes per document [len(texts)]).
    """
    bos = special_id(tok, "bos")
    # document text is data: a literal "<|eos|>" in it is encoded as ordinary text, never as the control token
    was = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        encode = getattr(
            tok, "encode_batch_fast", tok.encode_batch
        )  # _fast (no offsets) since tokenizers 0.20
        encodings = encode(texts, add_special_tokens=False)
    finally:
        tok.encode_special_tokens = was
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    tokens = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    for encoding, length in zip(encodings, lengths):
        tokens[pos] = bos
        tokens[pos + 1 : pos + length] = encoding.ids
        pos += length
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    return tokens, lengths, nbytes


def _init_worker(tok_file: str) -> None:
    """Pool initializer: load the tokenizer once per worker; one thread each (the pool is the parallelism)."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(tok_file)


def _encode_in_worker(texts: list[str], dtype: str) -> Encoded:
    assert _worker_tokenizer is not None, "_init_worker did not run"
    return encode_texts(_worker_tokenizer, texts, np.dtype(dtype))


def _batches(texts: Iterable[str], batch_docs: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, batch_docs)):
        yield batch


def _encoded_batches(
    batches: Iterable[list[str]], tok_file: Path, dtype: np.dtype, workers: int
) -> Iterator[Encoded]:
    """Encode batches in order, in-process (workers <= 1) or on a pool with a bounded queue."""
    if workers <= 1:
        tok = load_tokenizer(tok_file)
        for batch in batches:
            yield encode_texts(tok, batch, dtype)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with context.Pool(workers, initializer=_init_worker, initargs=(str(tok_file),)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch, dtype.str)))
            if len(pending) >= 2 * workers:  # bound memory: at most 2 batches queued per worker
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _ShardSink:
    """Append encoded documents to shards of at most ``tokens_per_shard`` tokens, split between documents."""

    def __init__(self, out_dir: Path, dtype: np.dtype, tokens_per_shard: int):
        self.out_dir, self.dtype, self.tokens_per_shard = out_dir, dtype, tokens_per_shard
        self.shards: list[dict] = []
        self._fh: BinaryIO | None = None
        self._current = {"tokens": 0, "bytes": 0, "docs": 0}

    def _name(self) -> str:
        return f"shard_{len(self.shards):05d}.bin"

    def _tmp(self) -> Path:
        return self.out_dir / f".{self._name()}.tmp"

    def _close_shard(self) -> None:
        if self._fh is None:
            self._fh = open(self._tmp(), "wb")  # an empty shard
        self._fh.close()
        self._fh = None
        name = self._name()
        os.replace(self._tmp(), self.out_dir / name)
        self.shards.append({"file": name, **self._current})
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
                self._fh = open(self._tmp(), "wb")
            self._fh.write(tokens[offsets[start] : offsets[end]].tobytes())
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
        if self._fh is not None:
            self._fh.close()
            self._tmp().unlink(missing_ok=True)


def _prepare_dir(out_dir: Path) -> None:
    """Create ``out_dir``; delete shards and index of an interrupted earlier attempt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(out_dir.glob(SHARD_GLOB)) + [p for p in [out_dir / INDEX_FILE] if p.exists()]
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
) -> dict:
    """Tokenise a stream of documents into ``out_dir`` (``shard_NNNNN.bin`` + ``index.json``).

    Args:
        texts: documents, streamed; at most ``2 * workers`` batches are held in memory.
        tok_path: ``tokenizer.json`` or its directory; each worker loads it once.
        out_dir: created if missing; shards and index of an earlier attempt in it are deleted first.
        workers: encoding processes; 1 encodes in this process (with ``tokenizers``' own threads).
            Workers are *spawned*, so a calling script needs the ``if __name__ == "__main__":`` guard.
        batch_docs: documents per task sent to a worker.
        tokens_per_shard: shard size limit in tokens (exceeded only by a single longer document).
        progress: called with the number of documents after each encoded batch (e.g. ``bar.update``).

    Returns:
        the index written to ``index.json``.

    Raises:
        InputError: the tokenizer is missing or invalid.
    """
    if batch_docs < 1 or tokens_per_shard < 1:
        raise ValueError(
            f"batch_docs and tokens_per_shard must be >= 1, got {batch_docs}, {tokens_per_shard}"
        )
    tok_file = tokenizer_file(tok_path)
    vocab_size = load_tokenizer(tok_file).get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    out_dir = Path(out_dir)
    _prepare_dir(out_dir)
    sink = _ShardSink(out_dir, dtype, tokens_per_shard)
    try:
        for tokens, lengths, nbytes in _encoded_batches(
            _batches(texts, batch_docs), tok_file, dtype, workers
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
        "shards": shards,
        "tokens": sum(s["tokens"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "docs": sum(s["docs"] for s in shards),
    }
    _write_json(out_dir / INDEX_FILE, index)
    logger.info("%s: %d docs, %d tokens in %d shard(s)", out_dir, index["docs"], index["tokens"], len(shards))
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
