"""Clean a stream of documents: a chain of steps with counts (the pipeline's filters are its steps).

Shaped like datatrove's pipeline: a *step* is a callable ``step(docs, drop) -> Iterator[Document]``
that yields the documents it keeps and calls ``drop(doc, reason)`` for each one it removes.
``Cleaner`` chains steps, counts documents and UTF-8 bytes in and out (in total and per step), and
tallies drops by reason in a ``CleanStats``. Adding a filter means writing one more small step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from lmforge.data.document import Document

DropFn = Callable[[Document, str], None]
Step = Callable[[Iterable[Document], DropFn], Iterator[Document]]

_SAMPLE_IDS = 10


def utf8_len(text: str) -> int:
    """Number of bytes of ``text`` encoded as UTF-8."""
    return len(text.encode("utf-8", errors="surrogatepass"))


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
    steps: list[dict] = field(default_factory=list)  # per step: name, docs and bytes out, drops by reason

    def to_dict(self) -> dict:
        """JSON-able copy (for ``stats.json``); each step's input is the previous step's output."""
        steps, docs, size = [], self.docs_in, self.bytes_in
        for s in self.steps:
            steps.append(
                {
                    "step": s["step"],
                    "docs_in": docs,
                    "docs_out": s["docs_out"],
                    "bytes_in": size,
                    "bytes_out": s["bytes_out"],
                    "drops": dict(sorted(s["drops"].items())),
                }
            )
            docs, size = s["docs_out"], s["bytes_out"]
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": dict(sorted(self.drops.items())),
            "dropped_ids": {k: list(v) for k, v in sorted(self.dropped_ids.items())},
            "steps": steps,
        }


def drop_empty(docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
    """Step: drop documents whose text is only whitespace (reason ``empty``)."""
    for doc in docs:
        if doc.text.strip():
            yield doc
        else:
            drop(doc, "empty")


def step_name(step: Step) -> str:
    """A step's name for statistics: its ``name`` attribute, function name, or class name."""
    return getattr(step, "name", None) or getattr(step, "__name__", None) or type(step).__name__


class Cleaner:
    """Run documents through a chain of steps, keeping counts in ``self.stats``.

    Args:
        steps: the chain, applied in order (``pipeline._steps`` builds the configured one).
        on_drop: called as ``on_drop(doc, reason)`` for each dropped document (e.g. to write rejects).

    Example::

        cleaner = Cleaner([drop_empty, quality.build(QualityConfig())])
        for doc in cleaner(iter_documents(spec)):
            writer.write(doc)
        cleaner.stats.to_dict()  # {"docs_in": ..., "drops": {"empty": 3, ...}, ...}
    """

    def __init__(
        self,
        steps: Sequence[Step],
        on_drop: DropFn | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.steps: list[Step] = list(steps)
        self.on_drop = on_drop
        self.stats = CleanStats()
        names = list(names) if names is not None else [step_name(s) for s in self.steps]
        if len(names) != len(self.steps):
            raise ValueError(f"{len(names)} names for {len(self.steps)} steps")
        self.stats.steps = [{"step": n, "docs_out": 0, "bytes_out": 0, "drops": Counter()} for n in names]

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

    def _count_out(self, docs: Iterable[Document], record: dict) -> Iterator[Document]:
        for doc in docs:
            record["docs_out"] += 1
            record["bytes_out"] += utf8_len(doc.text)
            yield doc

    def _dropper(self, record: dict) -> DropFn:
        def drop(doc: Document, reason: str) -> None:
            record["drops"][reason] += 1
            self.drop(doc, reason)

        return drop

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        """Yield the documents every step keeps, in input order."""
        stream: Iterable[Document] = self._count_in(docs)
        for step, record in zip(self.steps, self.stats.steps):
            stream = self._count_out(step(stream, self._dropper(record)), record)
        for doc in stream:
            self.stats.docs_out += 1
            self.stats.bytes_out += utf8_len(doc.text)
            yield doc
