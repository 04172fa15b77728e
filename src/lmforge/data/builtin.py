"""Corpora every CPython installation carries, so a demo needs no download.

``python-docs`` (about 2 MB of English prose): each topic of the interactive help
(``pydoc_data.topics``), then, per standard-library module, its module docstring and the docstrings
of its classes and functions in source order, joined by blank lines. The docstrings are read by
parsing the ``.py`` files with ``ast``; no standard-library module is imported.

``python-code``: the standard-library source files themselves, one document per file.

Test suites, IDLE, lib2to3 and installed packages are skipped. Order is deterministic: topics
sorted by name, files sorted by path relative to the standard-library directory.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import platform
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.document import Document
from lmforge.data.readers import Problem, report

logger = logging.getLogger(__name__)

BUILTIN_NAMES = ("python-docs", "python-code")
SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
)
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_dir() -> Path:
    """The directory holding this interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Every ``.py`` file under ``root`` (default: the stdlib) outside ``SKIP_DIRS``, sorted by relative path."""
    root = root or stdlib_dir()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        found.extend(Path(folder, f) for f in files if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def docstrings(source: bytes) -> list[str]:
    """The module, class and function docstrings of Python ``source``, in source order.

    Raises:
        SyntaxError, ValueError: ``source`` does not parse.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        tree = ast.parse(source)
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                found.append(doc.strip())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _help_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        logger.warning(
            "pydoc_data is missing from this Python %s; python-docs has no help topics",
            platform.python_version(),
        )
        return {}
    return topics


def iter_python_docs(source: str, problems: list[Problem] | None = None) -> Iterator[Document]:
    """Yield the ``python-docs`` corpus (ids ``python-docs/topic/<name>`` then ``python-docs/<rel path>``)."""
    for name, text in sorted(_help_topics().items()):
        yield Document(id=f"python-docs/topic/{name}", text=text, metadata={"source": source})
    root = stdlib_dir()
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            parts = docstrings(path.read_bytes())
        except (SyntaxError, ValueError, OSError) as exc:
            report(problems, Problem(str(path), None, "unparsable", f"skipped: {exc}"))
            continue
        if parts:
            yield Document(
                id=f"python-docs/{rel}", text="\n\n".join(parts), metadata={"source": source, "file": rel}
            )


def iter_python_code(source: str, problems: list[Problem] | None = None) -> Iterator[Document]:
    """Yield the ``python-code`` corpus: one document per stdlib file (id ``python-code/<rel path>``)."""
    root = stdlib_dir()
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            text = importlib.util.decode_source(path.read_bytes())
        except (SyntaxError, UnicodeDecodeError, OSError) as exc:
            report(problems, Problem(str(path), None, "invalid_utf8", f"skipped: {exc}"))
            continue
        yield Document(id=f"python-code/{rel}", text=text, metadata={"source": source, "file": rel})


def iter_builtin(name: str, source: str, problems: list[Problem] | None = None) -> Iterator[Document]:
    """Yield builtin corpus ``name`` (one of ``BUILTIN_NAMES``), tagging documents with ``source``."""
    if name == "python-docs":
        return iter_python_docs(source, problems)
    if name == "python-code":
        return iter_python_code(source, problems)
    raise ValueError(f"unknown builtin corpus {name!r}; valid: {', '.join(BUILTIN_NAMES)}")
