"""Turn a command line into a stage's typed config and call its ``main`` (shared by every subcommand).

``lmforge <stage> [RECIPE.yaml] [overrides] [-q|-v] [--help]``: the recipe's ``stages.<stage>``
section, then the overrides, are validated into the stage's ``Config`` before any work starts.
A stage module may define ``cli(argv) -> int`` to parse its own command line (``run`` does).
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType
from typing import Any

from lmforge.config import ConfigError, describe, from_dict, load_yaml, merge, parse_overrides
from lmforge.errors import LmforgeError
from lmforge.log import setup_logging

log = logging.getLogger("lmforge")


def split_global_flags(argv: list[str]) -> tuple[list[str], bool, bool, bool]:
    """Remove ``-q/--quiet``, ``-v/--verbose`` and ``-h/--help`` from ``argv``."""
    quiet = verbose = want_help = False
    rest = []
    for a in argv:
        if a in ("-q", "--quiet"):
            quiet = True
        elif a in ("-v", "--verbose"):
            verbose = True
        elif a in ("-h", "--help"):
            want_help = True
        else:
            rest.append(a)
    return rest, quiet, verbose, want_help


def help_text(name: str, module: ModuleType, kind: str = "") -> str:
    """``--help`` for a stage: its docstring's first paragraph and every option (type, default, help)."""
    doc = (module.__doc__ or "").strip().split("\n\n")[0]
    rows = describe(module.Config)
    width = max(len(r[0]) for r in rows) + 2
    lines = [
        f"usage: lmforge {name} [RECIPE.yaml] [--key value | key=value ...] [-q | -v]",
        "",
        doc,
        "",
        "options:",
    ]
    for key, tp, default, meaning in rows:
        lines.append(f"  --{key:<{width}} {meaning}")
        lines.append(f"    {'':<{width}} type: {tp}; default: {default}")
    lines += [
        "",
        (
            f"A RECIPE.yaml supplies its section with `stage: {kind}`"
            if kind
            else f"A RECIPE.yaml supplies its `stages.{name}` section"
        )
        + "; options given after it override it.",
        "Inputs written @name mean the stage `name` beside --out (e.g. --out runs/x/"
        + name.split()[-1]
        + ").",
    ]
    return "\n".join(lines)


def config_from_args(name: str, module: ModuleType, argv: list[str], kind: str = "") -> Any:
    """The stage's validated config from ``[RECIPE.yaml] overrides`` (raises ConfigError).

    The recipe section is ``stages.<name>``, or the section whose ``stage:`` is ``kind`` (e.g.
    ``finetune.classify``): the only one, or among several the one named like the method.
    """
    data: dict[str, Any] = {}
    if argv and argv[0].endswith((".yaml", ".yml")) and "=" not in argv[0]:
        recipe = load_yaml(argv[0])
        sections = recipe.get("stages") or {}
        matches = [k for k, v in sections.items() if kind and isinstance(v, dict) and v.get("stage") == kind]
        # by instance name, else the one section of this kind (named like the method if several)
        found = (
            [name] if name in sections else [k for k in matches if k == kind.rpartition(".")[2]] or matches
        )
        if len(found) != 1:
            what = (
                f"several sections with stage: {kind} ({', '.join(found)}); run one with `lmforge run --only`"
            )
            raise ConfigError(
                "",
                f"recipe {argv[0]}: {what}"
                if found
                else f"recipe {argv[0]} has no stages.{name} section (it has: {', '.join(sections)})",
            )
        data = dict(sections[found[0]] or {})
        data.pop("stage", None)
        argv = argv[1:]
    data = merge(data, parse_overrides(argv))
    return from_dict(module.Config, data)


def invoke(module: ModuleType, name: str, argv: list[str], kind: str = "") -> int:
    """Run subcommand ``name`` implemented by ``module``; returns the exit code.

    ``kind`` names the stage kind when it differs from ``name`` (``finetune.sft`` for ``finetune sft``).
    """
    if hasattr(module, "cli"):
        return module.cli(argv)
    argv, quiet, verbose, want_help = split_global_flags(argv)
    if want_help:
        print(help_text(name, module, kind))
        return 0
    setup_logging(quiet=quiet, verbose=verbose)
    try:
        cfg = config_from_args(name, module, argv, kind)
        manifest = module.main(cfg)
    except LmforgeError as exc:
        print(f"lmforge {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {name}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print_summary([manifest])
    return 0


def print_summary(manifests: list[dict[str, Any]]) -> None:
    """A short table of stages, status and headline metrics on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lmforge", show_lines=False)
    for col in ("stage", "status", "time", "metrics"):
        table.add_column(col)
    for m in manifests:
        status = "cached" if m.get("cached_last") else m.get("status", "?")
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in headline(m.get("metrics", {}))[:6])
        table.add_row(m.get("instance", "?"), status, f"{m.get('duration_s', 0):.1f}s", metrics)
    Console(stderr=False, width=160).print(table)


# what a reader looks for first in a stage's metrics (else they come in the manifest's order)
HEADLINE = (
    "val_loss", "val_bpb", "unigram_bpb", "accuracy", "f1", "exact_match", "bleu", "pass@1",
    "rm_pairwise_accuracy", "dpo_win_rate", "ppo_win_rate", "grpo_accuracy_before", "grpo_accuracy_after",
    "recall@1", "mrr", "docs_in", "docs_out", "bytes_out", "vocab_size", "bytes_per_token", "params",
    "steps", "steps_planned", "stopped_by_time_budget", "early_stopped", "tokens", "samples", "tokens_per_s",
)  # fmt: skip


def headline(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """``metrics`` with the ``HEADLINE`` keys first, in that order, then the rest as they come."""
    rank = {k: i for i, k in enumerate(HEADLINE)}
    return sorted(metrics.items(), key=lambda kv: rank.get(kv[0], len(HEADLINE)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def dispatch(group: str, argv: list[str]) -> int:
    """``lmforge <group> <method> ...`` for a command with methods (finetune, align, export, ...): the
    method's stage program from the registry (``stages/registry.py``); its stage kind is
    ``<group>.<method>``."""
    import difflib
    import importlib

    from lmforge.stages.registry import GROUPS, methods

    table = methods(group)
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(len(m) for m in table) + 2
        info = GROUPS[group]
        print(
            f"usage: lmforge {group} <method> [RECIPE.yaml] [--key value | key=value ...] [-q | -v]\n\n"
            f"{info.purpose}\n\nmethods:\n"
            + "\n".join(f"  {m:<{width}}{cmd.summary}" for m, cmd in table.items())
            + f"\n\n`lmforge {group} <method> --help` lists the method's options.\n{info.note}\n"
        )
        return 0 if argv else 2
    method, rest = argv[0], argv[1:]
    if method not in table:
        near = difflib.get_close_matches(method, list(table), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        print(
            f"lmforge {group}: unknown method '{method}'.{hint} Methods: {', '.join(table)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(table[method].module)
    return invoke(module, f"{group} {method}", rest, kind=f"{group}.{method}")


def invoke_interactive(name: str, module: ModuleType, argv: list[str], *, quiet: bool | None = None) -> int:
    """``lmforge <name> ...`` for a long-running command without a run-store directory (chat, serve):
    options parsed like every stage's, then ``module.main(config)`` until it returns or Ctrl-C.

    ``quiet`` forces the log level (chat keeps the terminal for the conversation); None takes ``-q``.
    """
    argv, quiet_flag, verbose, want_help = split_global_flags(argv)
    if want_help:
        print(help_text(name, module))
        return 0
    setup_logging(quiet=quiet_flag if quiet is None else quiet, verbose=verbose)
    try:
        module.main(config_from_args(name, module, argv))
    except LmforgeError as exc:
        print(f"lmforge {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print()
    return 0
