"""The one record that flows through the data pipeline: an identified piece of text."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Document:
    """A unit of text with a stable identity.

    Args:
        id: identifier, stable across runs for the same input (the train/val split hashes it).
        text: the document text.
        metadata: free-form facts about the document; readers set ``source`` (the source spec the
            document came from) and, for files, ``file`` (and ``line`` or ``row`` where relevant).
    """

    id: str
    text: str
    metadata: dict = field(default_factory=dict)
