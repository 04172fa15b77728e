"""The command line: a table from subcommand to stage program. No logic lives here.

``lmforge <stage> [RECIPE.yaml] [key=value | --key value ...]`` builds the stage's typed config from
the recipe's section for that stage plus the overrides, then calls the stage's ``main(config)``.
``lmforge run RECIPE --out runs/NAME`` runs every stage of a recipe through the run store.
Stage modules are imported only when their subcommand is used, so ``lmforge --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

# the table lives in stages/registry.py, read by this CLI and by `lmforge run` alike
from lmforge.stages.registry import GROUPS, STAGES, commands

USAGE = """usage: lmforge [-h] [--version] <command> [RECIPE.yaml] [key=value | --key value ...] [-q | -v]

Build language models end to end on the hardware you have.

commands:
{table}

Options are dotted config keys: `--model.n_layer 6` or `model.n_layer=6` (values are YAML).
`lmforge <command> --help` lists every option with its type, default and meaning.
Global flags: -q/--quiet (warnings only, no progress bars), -v/--verbose (debug log).

Quick start:  lmforge run recipes/tiny.yaml --out runs/tiny
"""


def _table() -> str:
    return "\n".join(f"  {name:<10} {summary}" for name, summary in commands().items())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmforge`` console script; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.format(table=_table()))
        return 0
    if args[0] == "--version":
        from lmforge import __version__

        print(f"lmforge {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name in GROUPS:
        from lmforge.stages.invoke import dispatch

        return dispatch(name, rest)
    cmd = STAGES.get(name)
    if cmd is None:
        import difflib

        names = list(commands())
        near = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        print(f"lmforge: unknown command '{name}'.{hint} Commands: {', '.join(names)}", file=sys.stderr)
        return 2
    if cmd.decodes:
        from lmforge.runtime import spin_for_decoding

        spin_for_decoding()
    from lmforge.stages.invoke import invoke

    return invoke(importlib.import_module(cmd.module), name, rest)


if __name__ == "__main__":
    raise SystemExit(main())
