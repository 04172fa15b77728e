"""Turn source specs (``builtin:NAME``, files, directories, globs) into streams of documents.

``resolve_sources`` checks every spec before any work starts and raises one ``InputError`` listing
every fault (unknown builtin, missing path, glob matching nothing, unsupported extension, missing
text column). ``iter_documents`` then streams one resolved source; ``fingerprint`` describes it
cheaply (file sizes and modification times, never contents) for the run store's cache key.

Spec forms:
  ``builtin:python-docs`` / ``builtin:python-code``  corpora every CPython carries (see ``builtin``)
  ``task:squad@../shared/data``, ``task:my.yaml``     an eval task's training-split text
                                                      (``eval/corpus.py``; never its test split)

``task:`` specs are read by the eval package, which sits above ``data``: the caller passes its
``TaskSource`` (``eval.corpus.TASK_SOURCE``: the built-in task names and the text reader) to
``resolve_sources``, so this module never imports ``eval``.
  ``notes.md``, ``dump.jsonl.zst``                   one file
  ``corpus/``                                         every supported file below it, recursively
  ``data/**/*.parquet``                               a glob (``**`` crosses directories)
"""

from __future__ import annotations

import glob
import os
import platform
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.builtin import BUILTIN_NAMES, iter_builtin, stdlib_dir
from lmforge.data.document import Document
from lmforge.data.readers import (
    COMPRESSIONS,
    FORMATS,
    Problem,
    check_columns,
    open_binary,
    read_file,
    split_name,
)
from lmforge.errors import InputError

__all__ = [
    "BUILTIN_PREFIX",
    "Problem",
    "SourceSpec",
    "TaskSource",
    "fingerprint",
    "iter_documents",
    "resolve_sources",
]

BUILTIN_PREFIX = "builtin:"
TASK_PREFIX = "task:"
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class TaskSource:
    """How ``task:`` specs are read, given by the eval package (``eval.corpus.TASK_SOURCE``).

    Args:
        names: the built-in task names (``task:NAME@DIR``).
        texts: ``texts(task, data_dir)`` → the training-split texts of a built-in name or a YAML file.
    """

    names: Collection[str]
    texts: Callable[[str, str], Iterable[str]]


@dataclass(frozen=True)
class SourceSpec:
    """One validated source.

    Args:
        spec: the spec as the user wrote it; stored as each document's ``metadata["source"]``.
        builtin: builtin corpus name (``python-docs``), or None for files.
        files: the files to read, in reading order (empty for builtins).
        text_field: JSON key / column holding the text in JSONL, CSV and Parquet files.
        task: an eval task name or YAML file whose training split is the text (``task:`` specs).
        task_dir: the built-in task's data directory (``task:NAME@DIR``).
        tasks: the reader of ``task:`` specs (from ``resolve_sources``' ``tasks``).
    """

    spec: str
    builtin: str | None = None
    files: tuple[Path, ...] = ()
    text_field: str = "text"
    task: str | None = None
    task_dir: str = ""
    tasks: TaskSource | None = field(default=None, compare=False, repr=False)


def _valid_extensions() -> str:
    return (
        ", ".join(f".{f}" for f in FORMATS)
        + f" (optionally compressed: {', '.join('.' + c for c in COMPRESSIONS)})"
    )


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _walk(directory: Path) -> list[Path]:
    """Supported, non-hidden files below ``directory``, sorted."""
    found = []
    for folder, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(folder, name)
            if split_name(path)[0] is not None and not _is_hidden(path, directory):
                found.append(path)
    return sorted(found)


_NOT_TEXT = {
    "pdf",
    "doc",
    "docx",
    "odt",
    "rtf",
    "epub",
    "png",
    "jpg",
    "jpeg",
    "gif",
    "zip",
    "tar",
    "7z",
    "exe",
}


def _plain_text(path: Path) -> bool:
    """Whether a file without a known extension reads as plain text: not a known document or image
    format, and no NUL byte in its first 8 KiB (the heuristic of git and grep)."""
    suffixes = [x.lower().lstrip(".") for x in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    if suffixes and suffixes[-1] in _NOT_TEXT:
        return False
    try:
        with open_binary(path, compression) as fh:
            return b"\x00" not in fh.read(8192)
    except Exception:  # noqa: BLE001 - unreadable: check_readable reports it with its reason
        return True


def _expand(spec: str, errors: list[str], bad: list[Problem]) -> list[Path]:
    """Files named by a path/directory/glob spec; mistakes in the spec are appended to ``errors``, bad
    data (a glob matching nothing, a directory without supported files) to ``bad``."""
    if _GLOB_CHARS & set(spec):
        matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
        if not matches:
            bad.append(Problem(spec, None, "no_match", "glob matches nothing"))
            return []
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            errors.append(f"{spec}: no such file or directory")
            return []
        matches = [path]
    files: list[Path] = []
    for match in matches:
        if match.is_dir():
            below = _walk(match)
            if not below:
                what = f"directory holds no supported files; valid: {_valid_extensions()}"
                bad.append(Problem(str(match), None, "empty_directory", what))
            files.extend(below)
        elif split_name(match)[0] is None and not _plain_text(match):
            errors.append(f"{match}: unsupported file type (not plain text); valid: {_valid_extensions()}")
        else:  # a file named here is read even without a known extension when it is text (.raw, none)
            files.append(match)
    return files


def resolve_sources(
    specs: Iterable[str],
    text_field: str = "text",
    *,
    skipped: list[Problem] | None = None,
    tasks: TaskSource | None = None,
) -> list[SourceSpec]:
    """Validate source specs and list their files, before any document is read.

    Two kinds of fault: mistakes in a spec (unknown builtin or task, a missing path, an unsupported
    file named on its own) always raise; bad data (a glob matching nothing, a directory without
    supported files, a CSV/Parquet file that cannot be opened or lacks the text column) raises too,
    unless ``skipped`` is given: then each is appended to it as a ``Problem`` (kinds ``no_match``,
    ``empty_directory``, ``unreadable_file``), the file or spec is left out, and the rest is returned.

    Args:
        specs: ``builtin:NAME``, file paths, directories (read recursively) or globs.
        text_field: JSON key / column holding the text in JSONL, CSV and Parquet files.
        skipped: collects the bad sources left out; None makes them errors.
        tasks: reads ``task:`` specs (``eval.corpus.TASK_SOURCE``); without it a ``task:`` spec is an
            error.

    Raises:
        InputError: listing every fault found, one per line.
    """
    specs = list(specs)
    if not specs:
        raise InputError(
            f"no sources given; valid: builtin:{', builtin:'.join(BUILTIN_NAMES)}, or paths/globs"
        )
    resolved, errors, bad = [], [], []
    for spec in specs:
        if spec.startswith(BUILTIN_PREFIX):
            name = spec[len(BUILTIN_PREFIX) :]
            if name not in BUILTIN_NAMES:
                errors.append(
                    f"{spec}: unknown builtin source; valid: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_NAMES)}"
                )
            resolved.append(SourceSpec(spec=spec, builtin=name, text_field=text_field))
            continue
        if spec.startswith(TASK_PREFIX):
            resolved.append(_task_spec(spec, text_field, errors, tasks))
            continue
        files = []
        for path in _expand(spec, errors, bad):
            try:
                check_columns(path, text_field)
                files.append(path)
            except InputError as exc:
                bad.append(Problem(str(path), None, "unreadable_file", exc.args[0].removeprefix(f"{path}: ")))
        if files or skipped is None:
            resolved.append(SourceSpec(spec=spec, files=tuple(files), text_field=text_field))
    if skipped is None:
        errors += [str(p) for p in bad]
    else:
        skipped.extend(bad)
    if errors:
        raise InputError("invalid sources:\n  " + "\n  ".join(errors))
    return resolved


def _task_spec(spec: str, text_field: str, errors: list[str], tasks: TaskSource | None) -> SourceSpec:
    """``task:NAME@DIR`` (a built-in eval task, data under DIR) or ``task:FILE.yaml``."""
    name, _, where = spec[len(TASK_PREFIX) :].partition("@")
    if tasks is None:
        errors.append(f"{spec}: task sources are not readable here (no task reader given)")
        return SourceSpec(spec=spec, text_field=text_field, task=name, task_dir=where)
    if name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if not path.is_file():
            errors.append(f"{spec}: no such task file")
        return SourceSpec(spec=spec, text_field=text_field, task=str(path), tasks=tasks)
    if name not in tasks.names:
        errors.append(f"{spec}: unknown task {name!r}; built-in: {', '.join(tasks.names)}, or a .yaml file")
    elif not where:
        errors.append(f"{spec}: a built-in task needs its data directory: task:{name}@DIR")
    elif not Path(where).expanduser().is_dir():
        errors.append(f"{spec}: no such directory {where}")
    return SourceSpec(spec=spec, text_field=text_field, task=name, task_dir=where, tasks=tasks)


def iter_task(spec: SourceSpec) -> Iterator[Document]:
    """The documents of a ``task:`` source: one per training-split text (``spec.tasks``, e.g.
    ``eval/corpus.py``'s reader)."""
    if spec.tasks is None:
        raise InputError(f"{spec.spec}: no task reader (resolve task sources with resolve_sources' tasks)")
    for i, text in enumerate(spec.tasks.texts(spec.task or "", spec.task_dir)):
        yield Document(id=f"{spec.spec}#{i}", text=text, metadata={"source": spec.spec, "row": i})


def iter_documents(spec: SourceSpec, problems: list[Problem] | None = None) -> Iterator[Document]:
    """Stream the documents of one resolved source; ``metadata["source"]`` is ``spec.spec``.

    Args:
        spec: from ``resolve_sources``.
        problems: collects records that were skipped or repaired (``str(p)`` reads ``file:line: what``);
            None logs them as warnings instead.

    Raises:
        InputError: a whole file is unreadable (corrupt compression, no text column).
    """
    if spec.builtin is not None:
        yield from iter_builtin(spec.builtin, spec.spec, problems)
        return
    if spec.task is not None:
        yield from iter_task(spec)
        return
    for path in spec.files:
        yield from read_file(path, spec.spec, spec.text_field, problems)


def fingerprint(spec: SourceSpec) -> dict:
    """A cheap, JSON-able description that changes when the source's content may have changed.

    Files: ``[absolute path, size, mtime_ns]`` each. Builtins: the Python version and stdlib path.
    Tasks: every file under the data directory (or beside the YAML file), and the lmforge version
    (the task loaders' code decides the split).
    """
    if spec.builtin is not None:
        return {"spec": spec.spec, "python": platform.python_version(), "stdlib": str(stdlib_dir())}
    paths = list(spec.files)
    if spec.task is not None:
        from lmforge import __version__

        yaml_task = spec.task.endswith((".yaml", ".yml"))
        root = Path(spec.task).parent if yaml_task else Path(spec.task_dir).expanduser()
        paths = sorted(p for p in root.rglob("*") if p.is_file())
        extra = {"task": spec.task, "lmforge": __version__}
    else:
        extra = {"text_field": spec.text_field}
    files = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            raise InputError(
                f"{path}: cannot stat ({exc.strerror}); was it removed after resolve_sources?"
            ) from exc
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return {"spec": spec.spec, **extra, "files": files}
