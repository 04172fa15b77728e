"""The import contract of src/lmforge, checked on every import statement (inside functions too).

``LAYERS`` is the one declaration of the layering (docs/architecture.md draws it). Top to bottom: a
module may import its own package and any package on a lower line; packages on one line are
independent of each other (neither imports the other). ``lmforge`` is the package root (its version).
Imports under ``if TYPE_CHECKING:`` count for the layering (a type names a dependency too) but not for
import cycles, since they never run.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lmforge"

LAYERS = (
    ("__main__",),
    ("cli",),
    ("stages",),
    ("report", "serve"),
    ("scaling",),
    ("eval", "training"),
    ("inference",),
    ("interop",),
    ("data", "model", "tokenizer"),
    ("runstore",),
    ("config", "runtime", "log"),
    ("errors", "lmforge"),
)

# Import cycles between modules of one package that remain, each with why; a new one fails the test.
# none left (engine <-> speculative: their shared parts moved to inference/rows.py)
KNOWN_CYCLES: set[frozenset[str]] = set()


def level_of() -> dict[str, int]:
    return {package: i for i, line in enumerate(LAYERS) for package in line}


def module_name(path: Path, root: Path) -> str:
    parts = ["lmforge", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str, root: Path = SRC) -> str:
    """``lmforge.model.checkpoint`` → ``model``; ``lmforge`` and a name of its root (``lmforge.__version__``)
    → ``lmforge``."""
    parts = module.split(".")
    if len(parts) > 1 and ((root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "lmforge"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` blocks."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return found


def imports(path: Path, root: Path) -> list[tuple[int, str, bool]]:
    """``(line, imported lmforge module, runs)`` of every import in ``path``: module level, inside
    functions, relative imports resolved, and ``importlib.import_module("lmforge...")`` with a literal
    name. ``runs`` is False under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _type_checking_nodes(tree)
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        for name in names:
            if name == "lmforge" or name.startswith("lmforge."):
                found.append((node.lineno, name, id(node) not in typing_only))
    return found


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def violations(root: Path = SRC) -> list[str]:
    """``file:line importer -> imported (why)`` for every import against ``LAYERS``."""
    levels = level_of()
    bad = []
    for name, path in modules(root).items():
        mine = package_of(name, root)
        if mine not in levels:
            bad.append(f"{path.relative_to(root.parent)}: package {mine!r} is in no layer of LAYERS")
            continue
        seen = set()
        for line, target, _ in imports(path, root):
            theirs = package_of(target, root)
            if (line, theirs) in seen:
                continue
            seen.add((line, theirs))
            if theirs == mine:
                continue
            if theirs not in levels:
                why = "not in LAYERS"
            elif levels[theirs] < levels[mine]:
                why = "a higher layer"
            elif levels[theirs] == levels[mine]:
                why = "an independent package of the same layer"
            else:
                continue
            bad.append(f"{path.relative_to(root.parent)}:{line} {mine} -> {theirs} ({why})")
    return bad


def cycles(root: Path = SRC) -> list[frozenset[str]]:
    """Groups of modules of one package that import each other at run time (strongly connected
    components of the module graph, imports inside functions included)."""
    known = modules(root)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for _, target, runs in imports(path, root):
            if (
                runs
                and target in known
                and target != name
                and package_of(target, root) == package_of(name, root)
            ):
                graph[name].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(frozenset(group))

    for v in sorted(known):
        if v not in index:
            visit(v)
    return found


def test_every_import_follows_the_layers():
    bad = violations()
    assert not bad, f"{len(bad)} imports against LAYERS (tests/test_layering.py):\n" + "\n".join(bad)


def test_no_new_import_cycles_inside_a_package():
    found = set(cycles())
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"
    assert KNOWN_CYCLES <= found, (
        f"fixed, drop from KNOWN_CYCLES: {[sorted(c) for c in KNOWN_CYCLES - found]}"
    )


def test_the_check_sees_imports_inside_functions_and_cycles(tmp_path):
    root = tmp_path / "lmforge"
    for package in ("model", "training"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "errors.py").write_text("")
    (root / "model" / "a.py").write_text(
        "import lmforge.errors\n\n\ndef f():\n    from lmforge.training.step import x\n    from . import b\n"
    )
    (root / "model" / "b.py").write_text("import importlib\nimportlib.import_module('lmforge.model.a')\n")
    (root / "widgets.py").write_text("")
    assert violations(root) == [
        "lmforge/model/a.py:5 model -> training (a higher layer)",
        "lmforge/widgets.py: package 'widgets' is in no layer of LAYERS",
    ]
    assert cycles(root) == [frozenset({"lmforge.model.a", "lmforge.model.b"})]
