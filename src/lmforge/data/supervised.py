"""Readers for supervised fine-tuning data: conversations, labelled texts and text pairs.

Three kinds of record, each read from a file whose name decides the format (``.jsonl``, ``.csv``,
``.tsv``, anything else = plain lines; each optionally ``.gz``/``.zst``/``.bz2``):

- **Conversations** (``read_conversations``), JSONL only, one conversation per line in any of these
  schemas, turned into ``[{"role", "content"}, ...]`` for ``tokenizer.chat.render_chat``:
  ``{"messages": [...]}`` (chat); ``{"prompt", "response"}``; Alpaca ``{"instruction", "input",
  "output"}`` (a non-empty ``input`` is appended to the instruction after a blank line);
  Self-Instruct seeds ``{"instruction", "instances": [{"input", "output"}, ...]}`` (one conversation
  per instance); GSM8K-style ``{"question", "answer"}``. An optional ``system`` string becomes the
  system turn.
- **Labelled texts** (``read_labeled``): JSONL or CSV/TSV with a text and a label column, or plain
  lines ``LABEL<space or tab>TEXT`` (the SST-2 / MR / CR / Subj files: ``1 a stirring , funny ...``).
- **Pairs** (``read_pairs``) for contrastive training: JSONL with one key of ``PAIR_A_KEYS``
  (``query``, ``anchor``, ``question``, ...) and one of ``PAIR_B_KEYS`` (``positive``, ``passage``,
  ...), e.g. BoolQ's ``{"question", "passage"}``; CSV/TSV with two such columns; or ``A<tab>B`` lines.

A record that cannot be used (malformed JSON, a missing or non-string field, a line without a label)
is reported as a ``data.readers.Problem`` naming ``file:line`` and skipped; the good records are kept.
A line that is not UTF-8 is read as Windows-1252 (MR and Subj are Latin-1) and reported as repaired.
A file that cannot be read at all raises ``InputError``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.readers import COMPRESSIONS, Problem, decode, open_binary, report, skip
from lmforge.errors import InputError

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
PAIR_A_KEYS = ("query", "anchor", "text_a", "a", "sentence1", "question")
PAIR_B_KEYS = ("positive", "text_b", "b", "sentence2", "passage")


@dataclass(frozen=True)
class Labeled:
    """One labelled text; ``where`` is ``file:line`` for messages."""

    text: str
    label: str
    where: str = ""


@dataclass(frozen=True)
class Pair:
    """Two texts that belong together (a query and its positive)."""

    a: str
    b: str
    where: str = ""


def file_format(path: Path) -> tuple[str, str | None]:
    """``(format, compression)`` of a data file: format is ``jsonl``, ``csv``, ``tsv`` or ``lines``."""
    suffixes = [s.lower().lstrip(".") for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    last = suffixes[-1] if suffixes else ""
    if last in ("jsonl", "json"):
        return "jsonl", compression
    if last in ("csv", "tsv"):
        return last, compression
    return "lines", compression


def _check_file(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    return path


def skipped(problems: list[Problem]) -> int:
    """How many of ``problems`` dropped a record (encoding repairs keep theirs)."""
    return sum(p.kind != "invalid_utf8" for p in problems)


def _text_lines(
    path: Path, compression: str | None, problems: list[Problem] | None
) -> Iterator[tuple[int, str]]:
    """``(line number, decoded line without its newline)`` for every line of ``path``: UTF-8, or else
    Windows-1252 (the classic sentence-classification files, e.g. MR and Subj, are Latin-1), the line
    kept and the repair reported as ``invalid_utf8``."""
    name = str(path)
    try:
        with open_binary(path, compression) as fh:
            for number, raw in enumerate(fh, start=1):
                line = decode(raw, name, number, problems, fallback="cp1252")
                yield number, (line.removeprefix("\ufeff") if number == 1 else line).rstrip("\r\n")
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc


def _json_records(path: Path, problems: list[Problem] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for every JSON-object line; malformed lines are reported and skipped."""
    name = str(path)
    _, compression = file_format(path)
    for number, line in _text_lines(path, compression, problems):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            report(problems, Problem(name, number, "malformed_json", f"malformed JSON ({exc.msg}); skipped"))
            continue
        if not isinstance(record, dict):
            report(problems, Problem(name, number, "malformed_json", "line is not a JSON object; skipped"))
            continue
        yield number, record


def _table_records(path: Path, problems: list[Problem] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row as a dict)`` for every row of a CSV or TSV file with a header."""
    fmt, compression = file_format(path)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    lines = (line for _, line in _text_lines(path, compression, problems))
    reader = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",")
    try:
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            yield reader.line_num, dict(zip(header, row))
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({exc})") from exc


def _rows(path: str | Path, problems: list[Problem] | None) -> tuple[Path, str, Iterator[tuple[int, Any]]]:
    """The checked file, its format and its rows: for a file of lines (``"lines"``) ``(line number,
    text)`` of every line that is not blank, else ``(line number, record)`` of JSONL or CSV/TSV.

    Raises:
        InputError: the file is missing (at once), or unreadable (while its rows are read).
    """
    path = _check_file(Path(path))
    fmt, compression = file_format(path)
    if fmt == "lines":
        rows: Iterator[tuple[int, Any]] = (
            (n, line) for n, line in _text_lines(path, compression, problems) if line.strip()
        )
    else:
        rows = _json_records(path, problems) if fmt == "jsonl" else _table_records(path, problems)
    return path, fmt, rows


def _str_field(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------------------------------
# conversations


def to_conversations(record: dict[str, Any]) -> list[Messages]:
    """The conversations one JSON record holds (schemas: module docstring); ``[]`` when none fits.

    Raises:
        ValueError: the record matches a schema but a field has the wrong type (the message says which).
    """
    system = _str_field(record, "system")
    head: Messages = [{"role": "system", "content": system}] if system else []
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise ValueError("'messages' must be a list of {role, content} objects with string content")
        return [[{"role": str(m.get("role")), "content": m["content"]} for m in messages]]
    pairs: list[tuple[str, str]] = []
    if "instruction" in record and "instances" in record:  # Self-Instruct seed tasks
        instances = record["instances"]
        if not isinstance(record["instruction"], str) or not isinstance(instances, list):
            raise ValueError("'instruction' must be a string and 'instances' a list")
        for inst in instances:
            if not isinstance(inst, dict) or not isinstance(inst.get("output"), str):
                raise ValueError("each of 'instances' needs a string 'output'")
            pairs.append((_with_input(record["instruction"], inst.get("input")), inst["output"]))
    else:
        for prompt_key, input_key, answer_key in (
            ("prompt", None, "response"),
            ("instruction", "input", "output"),
            ("question", None, "answer"),
        ):
            if prompt_key in record or answer_key in record:
                prompt, answer = record.get(prompt_key), record.get(answer_key)
                if not isinstance(prompt, str) or not isinstance(answer, str):
                    raise ValueError(f"'{prompt_key}' and '{answer_key}' must both be strings")
                extra = record.get(input_key) if input_key else None
                pairs.append((_with_input(prompt, extra), answer))
                break
    return [
        [*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        for prompt, answer in pairs
    ]


def _with_input(instruction: str, extra: Any) -> str:
    return f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction


def read_conversations(path: str | Path, problems: list[Problem] | None = None) -> list[Messages]:
    """Every conversation in a JSONL file (schemas: module docstring); bad records reported and skipped.

    Raises:
        InputError: the file is missing, unreadable or not JSONL.
    """
    path = _check_file(Path(path))
    if file_format(path)[0] != "jsonl":
        raise InputError(f"{path}: conversations are read from .jsonl files (optionally compressed)")
    out: list[Messages] = []
    for number, record in _json_records(path, problems):
        try:
            found = to_conversations(record)
        except ValueError as exc:
            skip(problems, str(path), number, str(exc))
            continue
        if not found:
            report(
                problems,
                Problem(
                    str(path),
                    number,
                    "missing_field",
                    f"no conversation schema matches keys {sorted(record)}; valid: messages, "
                    "prompt/response, instruction/input/output, instruction/instances, question/answer",
                ),
            )
        out.extend(found)
    return out


# --------------------------------------------------------------------------------------------------
# labelled texts


def read_labeled(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    problems: list[Problem] | None = None,
) -> list[Labeled]:
    """Labelled texts from JSONL, CSV/TSV (``text_field``/``label_field``) or ``LABEL TEXT`` lines.

    Labels are kept as strings (``1`` and ``"1"`` are the same label). Records without a text or a
    label are reported and skipped.

    Raises:
        InputError: the file is missing or unreadable, or a CSV/TSV lacks one of the columns.
    """
    path, fmt, rows = _rows(path, problems)
    name = str(path)
    out: list[Labeled] = []
    if fmt == "lines":
        for number, line in rows:
            parts = line.strip().split(None, 1)
            if len(parts) < 2:
                skip(problems, name, number, "expected 'LABEL TEXT'")
                continue
            out.append(Labeled(parts[1].strip(), parts[0], f"{name}:{number}"))
        return out
    for number, record in rows:
        if fmt != "jsonl" and not out and (text_field not in record or label_field not in record):
            raise InputError(
                f"{name}: needs columns {text_field!r} and {label_field!r}; has {sorted(record)}"
            )
        text, label = record.get(text_field), record.get(label_field)
        if isinstance(label, bool):
            label = str(label).lower()
        elif isinstance(label, (int, float)):
            label = str(int(label)) if float(label).is_integer() else str(label)
        if not isinstance(text, str) or not isinstance(label, str) or not label.strip():
            skip(problems, name, number, f"needs a string {text_field!r} and a {label_field!r}")
            continue
        out.append(Labeled(text, label.strip(), f"{name}:{number}"))
    return out


# --------------------------------------------------------------------------------------------------
# pairs


def read_pairs(path: str | Path, problems: list[Problem] | None = None) -> list[Pair]:
    """Text pairs from JSONL or CSV/TSV (keys: ``PAIR_A_KEYS`` × ``PAIR_B_KEYS``) or ``A<tab>B`` lines.

    Raises:
        InputError: the file is missing or unreadable.
    """
    path, fmt, rows = _rows(path, problems)
    name = str(path)
    out: list[Pair] = []
    if fmt == "lines":
        for number, line in rows:
            parts = line.split("\t")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                skip(problems, name, number, "expected 'A<tab>B'")
                continue
            out.append(Pair(parts[0].strip(), parts[1].strip(), f"{name}:{number}"))
        return out
    for number, record in rows:
        a = next((record[k] for k in PAIR_A_KEYS if isinstance(record.get(k), str)), None)
        b = next((record[k] for k in PAIR_B_KEYS if isinstance(record.get(k), str)), None)
        if not a or not b:
            skip(problems, name, number, f"needs one of {PAIR_A_KEYS} and one of {PAIR_B_KEYS} as strings")
            continue
        out.append(Pair(a, b, f"{name}:{number}"))
    return out


# --------------------------------------------------------------------------------------------------
# splits


def holdout(items: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Split ``items`` into ``(train, held out)`` by a hash of (seed, position): stable and order-free.

    At least one item is held out when ``fraction > 0`` and there are two or more items.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    train, held = [], []
    for i, item in enumerate(items):
        h = int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2**64
        (held if h < fraction else train).append(item)
    if fraction > 0 and not held and len(train) > 1:
        held.append(train.pop())
    return train, held


def sample_stratified(
    items: Sequence[Any],
    n: int,
    seed: int = 0,
    label: Callable[[Any], Any] = lambda x: x.label,
    what: str = "",
) -> list[Any]:
    """At most ``n`` of ``items`` (all when ``n`` is 0 or no fewer), drawn with ``seed`` and stratified by
    ``label``: each label keeps its share (largest remainders), so a file sorted by label (CR, MR, Subj)
    does not give a one-class subset as its first ``n`` lines would. The kept items stay in file order.
    A subset (or a whole split) holding one label is logged as a warning naming ``what``: its accuracy
    is 0 or 1 whatever the model does."""
    chosen = list(items)
    if n and n < len(items):
        groups: dict[Any, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(label(item), []).append(i)
        quota = {k: n * len(v) / len(items) for k, v in groups.items()}
        take = {k: int(q) for k, q in quota.items()}
        for k in sorted(quota, key=lambda k: (take[k] - quota[k], str(k)))[: n - sum(take.values())]:
            take[k] += 1
        rng = random.Random(seed)
        keep = sorted(i for k, idx in groups.items() for i in rng.sample(idx, take[k]))
        chosen = [items[i] for i in keep]
    if len({label(x) for x in chosen}) == 1 and len(chosen) > 1:
        logger.warning(
            "%s: all %d examples have one label (%r): scores on it mean nothing",
            what or "split",
            len(chosen),
            label(chosen[0]),
        )
    return chosen


def read_files(read: Callable[[Path, list], list[Any]], paths: Sequence[Path], problems: list) -> list[Any]:
    """Every record ``read(path, problems)`` returns, for each of ``paths`` in order (``read_conversations``,
    ``data.preferences.read_preferences``, ...); bad records go to ``problems``."""
    return [record for path in paths for record in read(path, problems)]


def train_and_held(
    read: Callable[[Path, list], list[Any]], inputs: Mapping[str, Path], fraction: float, seed: int
) -> tuple[list[Any], list[Any], list[Problem]]:
    """``(train, held out, problems)`` of a stage's data inputs: ``read`` (``read_files``) over the
    ``train*`` inputs in name order; the held-out records are the ``val`` input's, or else ``fraction``
    (0.1 when 0) of train (``holdout`` with ``seed``). ``problems`` lists the bad records read."""
    problems: list[Problem] = []
    train = read_files(read, [p for k, p in sorted(inputs.items()) if k.startswith("train")], problems)
    if "val" in inputs:
        return train, read_files(read, [inputs["val"]], problems), problems
    train, held = holdout(train, fraction or 0.1, seed)
    return train, held, problems


def holdout_groups(
    items: Sequence[Any], keys: Sequence[str], fraction: float, seed: int = 0
) -> tuple[list[Any], list[Any]]:
    """``holdout`` over the distinct ``keys`` (in first-seen order), each item following its key, so no
    key is on both sides (e.g. pairs keyed by passage: no passage is both trained on and held out).
    With every key distinct this is ``holdout(items, fraction, seed)``.

    Raises:
        ValueError: ``keys`` and ``items`` differ in length, or ``fraction`` outside [0, 1).
    """
    if len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} items")
    _, held_keys = holdout(list(dict.fromkeys(keys)), fraction, seed)
    held_set = set(held_keys)
    train = [x for x, k in zip(items, keys) if k not in held_set]
    return train, [x for x, k in zip(items, keys) if k in held_set]


def log_problems(problems: list[Problem], what: str, limit: int = 5) -> None:
    """Log how many records of ``what`` were skipped, with the first ``limit`` as examples."""
    if problems:
        logger.warning("%s: %d record(s) skipped or repaired, e.g.:", what, len(problems))
        for problem in problems[:limit]:
            logger.warning("  %s", problem)
