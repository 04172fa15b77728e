"""Decontaminate training data: drop (or flag) documents that share an n-gram with an eval set.

Follows GPT-3's procedure (Brown et al. 2020, appendix C): text is lower-cased and split into
words with punctuation removed; a training document is contaminated when it shares any 13-gram
with an evaluation example, or contains a whole example that is shorter than 13 words. We keep
whole-example matching to examples of at least ``min_words`` words (default 8): shorter strings
such as answer options ("yes", "cellular telephone") occur in ordinary text by chance.

Eval files: ``.jsonl`` / ``.json`` (every string found under any key named in ``text_fields``, at
any depth, including inside nested lists and mappings), ``.txt`` (the whole file, plus each line
as one example), each optionally ``.gz`` / ``.bz2`` / ``.zst``.

Each n-gram is hashed to 64 bits (BLAKE2b per word, combined by a polynomial over the n word
hashes) and the set is kept as a sorted ``np.uint64`` array, looked up with ``np.searchsorted``:
compact to pickle to worker processes (8 bytes per n-gram) and fast to probe. The set is built on
first use, or once up front with ``prepare()`` so workers receive it ready-made.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmforge.config import at_least, opt
from lmforge.data.clean import DropFn
from lmforge.data.document import Document
from lmforge.errors import ConfigError, InputError

__all__ = ["DecontamConfig", "Decontaminator", "build", "eval_texts", "ngram_hashes", "words"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
_PRIME = np.uint64(1099511628211)  # FNV-1a 64-bit prime, as the polynomial base
_FORMATS = ("jsonl", "json", "txt")
_COMPRESSIONS = ("gz", "bz2", "zst")
_WORD_CACHE: dict[str, int] = {}
_WORD_CACHE_MAX = 1_000_000


@dataclass
class DecontamConfig:
    """Options of the decontamination step (off while ``eval_files`` is empty)."""

    eval_files: list[str] = opt([], "eval sets to protect: .jsonl/.json/.txt, optionally .gz/.bz2/.zst")
    n: int = opt(13, "n-gram length in words (GPT-3 used 13)")
    action: Literal["drop", "flag"] = opt("drop", "drop contaminated documents, or flag them in metadata")
    text_fields: list[str] = opt(
        ["text", "question", "context", "passage", "ctx", "endings", "answer"],
        "JSON keys whose strings (at any depth) are eval text",
    )
    min_words: int = opt(8, "eval texts shorter than n words are matched whole if at least this long")

    def validate(self) -> None:
        at_least(self, 1, "n")
        if not 1 <= self.min_words <= self.n:
            raise ConfigError("min_words", f"must be in [1, n={self.n}], got {self.min_words}")
        if self.eval_files and not self.text_fields:
            raise ConfigError("text_fields", "at least one JSON key is needed to read eval files")


def words(text: str) -> list[str]:
    """Lower-cased word tokens with punctuation removed (the unit n-grams are made of)."""
    return _WORD.findall(text.lower())


def _word_hashes(tokens: list[str]) -> np.ndarray:
    if len(_WORD_CACHE) > _WORD_CACHE_MAX:
        _WORD_CACHE.clear()
    out = np.empty(len(tokens), dtype=np.uint64)
    for i, tok in enumerate(tokens):
        h = _WORD_CACHE.get(tok)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "little")
            _WORD_CACHE[tok] = h
        out[i] = h
    return out


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every run of ``n`` consecutive words: ``(n + h0) * P^n + h1 * P^(n-1) + ...``.

    Args:
        word_hashes: (W,) uint64, one hash per word.
        n: n-gram length.

    Returns:
        (max(W - n + 1, 0),) uint64.
    """
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(count, n, dtype=np.uint64)
        for i in range(n):
            h = h * _PRIME + word_hashes[i : i + count]
    return h


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "gz":
        raw = gzip.decompress(raw)
    elif suffix == "bz2":
        raw = bz2.decompress(raw)
    elif suffix == "zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    return raw.decode("utf-8", errors="replace")


def _format(path: Path) -> str | None:
    parts = path.name.lower().split(".")
    if len(parts) >= 2 and parts[-1] in _COMPRESSIONS:
        parts = parts[:-1]
    return parts[-1] if len(parts) >= 2 and parts[-1] in _FORMATS else None


def _strings_under(obj: Any, fields: frozenset[str], inside: bool = False) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _strings_under(value, fields, inside or key in fields)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings_under(value, fields, inside)
    elif isinstance(obj, str) and inside:
        yield obj


def eval_texts(path: str | Path, text_fields: Iterable[str]) -> Iterator[str]:
    """The eval texts of one file (see the module docstring for what is read from each format).

    Raises:
        InputError: the file is missing, of an unsupported type, or not valid JSON.
    """
    p = Path(path)
    fmt = _format(p)
    if fmt is None:
        valid = ", ".join(f".{f}" for f in _FORMATS)
        raise InputError(f"{p}: unsupported eval file type; valid: {valid} (optionally .gz/.bz2/.zst)")
    try:
        text = _open_text(p)
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(f"{p}: cannot read eval file ({exc})") from None
    fields = frozenset(text_fields)
    if fmt == "txt":
        yield text
        yield from text.splitlines()
        return
    if fmt == "json":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: offset {exc.pos}: not valid JSON ({exc.msg})") from None
        yield from _strings_under(record, fields)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{number}: not valid JSON ({exc.msg})") from None
        yield from _strings_under(record, fields)


def check_eval_files(paths: Iterable[str]) -> None:
    """Raise one ``InputError`` listing every eval file that is missing or of an unsupported type."""
    errors = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            errors.append(f"{path}: no such eval file")
        elif _format(p) is None:
            errors.append(f"{path}: unsupported eval file type; valid: .jsonl, .json, .txt (+ .gz/.bz2/.zst)")
    if errors:
        raise InputError("invalid eval files:\n  " + "\n  ".join(errors))


class Decontaminator:
    """Step: drop (reason ``contaminated``) or flag (``metadata["contaminated"] = True``) documents
    sharing an n-gram with the eval files, or containing a whole short eval text.

    ``counts()``: ``decontam_checked`` (documents seen), ``contaminated_docs``.
    """

    name = "decontam"  # shown in per-step statistics

    def __init__(self, cfg: DecontamConfig) -> None:
        self.cfg = cfg
        self.table: np.ndarray | None = None  # sorted unique uint64 n-gram hashes
        self.short_lengths: tuple[int, ...] = ()  # lengths of eval texts matched whole
        self.checked = 0
        self.contaminated = 0

    def prepare(self) -> Decontaminator:
        """Read the eval files and build the n-gram set (done once; later calls return at once)."""
        if self.table is not None:
            return self
        n, hashes, short = self.cfg.n, [], set()
        for path in self.cfg.eval_files:
            before = sum(len(h) for h in hashes)
            for text in eval_texts(path, self.cfg.text_fields):
                tokens = words(text)
                if len(tokens) >= n:
                    hashes.append(ngram_hashes(_word_hashes(tokens), n))
                elif len(tokens) >= self.cfg.min_words:
                    hashes.append(ngram_hashes(_word_hashes(tokens), len(tokens)))
                    short.add(len(tokens))
            if sum(len(h) for h in hashes) == before:
                log.warning(
                    "%s: no eval text of >= %d words under %s", path, self.cfg.min_words, self.cfg.text_fields
                )
        self.table = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
        self.short_lengths = tuple(sorted(short))
        log.info(
            "decontamination set: %d distinct n-grams from %d files",
            len(self.table),
            len(self.cfg.eval_files),
        )
        return self

    def _in_table(self, h: np.ndarray) -> bool:
        table = self.table
        if not len(h) or table is None or not len(table):
            return False
        idx = np.searchsorted(table, h)
        idx[idx == len(table)] = 0
        return bool((table[idx] == h).any())

    def is_contaminated(self, text: str) -> bool:
        """True when ``text`` shares an n-gram with the eval set or contains a whole short eval text."""
        self.prepare()
        tokens = words(text)
        if len(tokens) < min((self.cfg.n, *self.short_lengths)):
            return False
        wh = _word_hashes(tokens)
        return any(self._in_table(ngram_hashes(wh, k)) for k in (self.cfg.n, *self.short_lengths))

    def __call__(self, docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
        self.prepare()
        for doc in docs:
            self.checked += 1
            if not self.is_contaminated(doc.text):
                yield doc
                continue
            self.contaminated += 1
            if self.cfg.action == "drop":
                drop(doc, "contaminated")
            else:
                yield dataclasses.replace(doc, metadata={**doc.metadata, "contaminated": True})

    def counts(self) -> dict[str, int]:
        """What this instance measured (summable across worker processes)."""
        return {"decontam_checked": self.checked, "contaminated_docs": self.contaminated}


def build(cfg: DecontamConfig) -> Decontaminator | None:
    """The step for ``cfg``, or None when no eval files are named.

    The files are checked here, before any work (the n-gram set itself is built on first use).

    Raises:
        InputError: an eval file is missing or of an unsupported type.
    """
    if not cfg.eval_files:
        return None
    check_eval_files(cfg.eval_files)
    return Decontaminator(cfg)
