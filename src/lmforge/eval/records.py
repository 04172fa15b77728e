"""An evaluation item (``Doc``) and the file readers every task loader shares: ``open_text``
(``.gz``/``.bz2``/``.zip`` decompressed) and ``read_records`` (``.jsonl`` / ``.csv`` rows). The loaders
(``eval/loaders.py`` and the ``loaders_*`` modules it lists) import them from here, so none imports
another's table.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError


@dataclass
class Doc:
    """One evaluation item: the query text and what it is scored against.

    Multiple choice and classification: ``choices`` (continuations, without the target delimiter) and
    ``gold`` (index of the right one). Generation: ``references`` (one or more acceptable outputs).
    Code: ``references`` holds the canonical solution; a completion is run as the program
    ``code_prefix + completion + "\n\n" + test`` (``eval/codegen.py``). ``fields``: the record's
    structured parts (e.g. SQuAD's ``context`` and ``question``), which classic baselines
    (``eval/baselines.py``) read instead of parsing the rendered ``query``.
    """

    query: str
    choices: list[str] = field(default_factory=list)
    gold: int = -1
    references: list[str] = field(default_factory=list)
    test: str = ""
    code_prefix: str = ""
    fields: dict[str, Any] = field(default_factory=dict)  # the raw record's fields, for classic baselines

    @property
    def target(self) -> str:
        """The answer text shown when this doc is a few-shot example."""
        return self.choices[self.gold] if self.choices else self.references[0]


def open_text(path: Path) -> str:
    """Whole text of ``path``, decompressing ``.gz``/``.bz2`` and the first member of a ``.zip``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"task data {path} does not exist")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8").read()
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8").read()
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            return zf.read(zf.namelist()[0]).decode("utf-8")
    return path.read_text(encoding="utf-8")


def read_records(path: Path) -> Iterator[dict]:
    """Rows of a ``.jsonl`` or ``.csv`` file (optionally compressed) as dicts."""
    text = open_text(path)
    name = Path(path).name.removesuffix(".gz").removesuffix(".bz2")
    if name.endswith(".csv"):
        yield from csv.DictReader(io.StringIO(text))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not a JSON line ({e})") from None
