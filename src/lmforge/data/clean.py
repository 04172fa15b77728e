"""Clean a stream of documents: normalise text, drop empty documents and exact duplicates.

Shaped like datatrove's pipeline: a *step* is a callable ``step(docs, drop) -> Iterator[Document]``
that yields the documents it keeps and calls ``drop(doc, reason)`` for each one it removes.
``Cleaner`` chains steps, counts documents and UTF-8 bytes in and out, and tallies drops by reason
in a ``CleanStats``. Adding a filter means writing one more small step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from lmforge.data.document import Document

DropFn = Callable[[Document, str], None]
Step = Callable[[Iterable[Document], DropFn], Iterator[Document]]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Unicode category Cc except \t and \n
_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_MANY_BLANK_LINES = re.compile(r"\n{4,}")  # three or more blank lines
_SAMPLE_IDS = 10


def utf8_len(text: str) -> int:
    """Number of bytes of ``text`` encoded as UTF-8."""
    return len(text.encode("utf-8", errors="surrogatepass"))


def normalize_text(text: str) -> str:
    """Normalise text so equal-looking documents compare equal.

    In order: ``\\r\\n`` and lone ``\\r`` become ``\\n``; control characters other than ``\\n`` and
    ``\\t`` are removed; lone surrogates become U+FFFD; Unicode NFC; trailing whitespace is stripped
    from every line; runs of three or more blank lines become two; leading and trailing whitespace
    is stripped. The function is idempotent.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SURROGATE.sub("\ufffd", text)
    text = unicodedata.normalize("NFC", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _MANY_BLANK_LINES.sub("\n\n\n", text)
    return text.strip()


@dataclass
class CleanStats:
    """Counts kept by a ``Cleaner``: documents and UTF-8 bytes in and out, drops by reason.

    ``dropped_ids`` keeps the first few ids dropped for each reason, as examples for a report.
    """

    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter = field(default_factory=Counter)
    dropped_ids: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able copy (for ``stats.json``)."""
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": dict(sorted(self.drops.items())),
            "dropped_ids": {k: list(v) for k, v in sorted(self.dropped_ids.items())},
        }


def normalize(docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
    """Step: replace each document's text by ``normalize_text(text)``; drops nothing."""
    for doc in docs:
        yield dataclasses.replace(doc, text=normalize_text(doc.text))


def drop_empty(docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
    """Step: drop documents whose text is only whitespace (reason ``empty``)."""
    for doc in docs:
        if doc.text.strip():
            yield doc
        else:
            drop(doc, "empty")


class ExactDedup:
    """Step: drop documents whose exact text was seen before (reason ``exact_duplicate``); first wins.

    Keeps a 20-byte SHA-1 digest per distinct text, so memory grows with the number of documents,
    not their size. Place after ``normalize`` so texts differing only in whitespace count as equal.
    The set of seen texts persists across calls, so one instance deduplicates several streams.
    """

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def __call__(self, docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
        for doc in docs:
            digest = hashlib.sha1(doc.text.encode("utf-8", errors="surrogatepass")).digest()
            if digest in self.seen:
                drop(doc, "exact_duplicate")
            else:
                self.seen.add(digest)
                yield doc


def default_steps() -> list[Step]:
    """The standard cleaning chain: normalise, drop empty, drop exact duplicates."""
    return [normalize, drop_empty, ExactDedup()]


class Cleaner:
    """Run documents through a chain of steps, keeping counts in ``self.stats``.

    Args:
        steps: the chain, applied in order (default: ``default_steps()``).
        on_drop: called as ``on_drop(doc, reason)`` for each dropped document (e.g. to write rejects).

    Example::

        cleaner = Cleaner()
        for doc in cleaner(iter_documents(spec)):
            writer.write(doc)
        cleaner.stats.to_dict()  # {"docs_in": ..., "drops": {"exact_duplicate": 3}, ...}
    """

    def __init__(self, steps: Sequence[Step] | None = None, on_drop: DropFn | None = None) -> None:
        self.steps: list[Step] = list(steps) if steps is not None else default_steps()
        self.on_drop = on_drop
        self.stats = CleanStats()

    def drop(self, doc: Document, reason: str) -> None:
        """Record that ``doc`` was dropped for ``reason``."""
        self.stats.drops[reason] += 1
        examples = self.stats.dropped_ids.setdefault(reason, [])
        if len(examples) < _SAMPLE_IDS:
            examples.append(doc.id)
        if self.on_drop is not None:
            self.on_drop(doc, reason)

    def _count_in(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            self.stats.docs_in += 1
            self.stats.bytes_in += utf8_len(doc.text)
            yield doc

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        """Yield the documents every step keeps, in input order."""
        stream: Iterable[Document] = self._count_in(docs)
        for step in self.steps:
            stream = step(stream, self.drop)
        for doc in stream:
            self.stats.docs_out += 1
            self.stats.bytes_out += utf8_len(doc.text)
            yield doc
