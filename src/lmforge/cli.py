"""The command line: a table from subcommand to stage program. No logic lives here.

``lmforge <stage> [RECIPE.yaml] [key=value | --key value ...]`` builds the stage's typed config from
the recipe's section for that stage plus the overrides, then calls the stage's ``main(config)``.
``lmforge run RECIPE --out runs/NAME`` runs every stage of a recipe through the run store.
Stage modules are imported only when their subcommand is used, so ``lmforge --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # module holding Config and main(config) (or a cli(argv))
    summary: str


# subcommand → stage program, in lifecycle order
COMMANDS: dict[str, Command] = {
    "data": Command("lmforge.stages.data", "read sources, clean and deduplicate, write parquet shards"),
    "tokenizer": Command("lmforge.stages.tokenizer", "train a tokenizer and write token shards"),
    "pretrain": Command("lmforge.stages.pretrain", "pretrain a decoder-only transformer"),
    "finetune": Command(
        "lmforge.stages.finetune",
        "fine-tune: sft, lora, classify, multitask, dapt, contrastive, ner, task, qa",
    ),
    "align": Command("lmforge.stages.align", "align: collect (ranking page), reward, dpo, ppo, grpo"),
    "eval": Command("lmforge.stages.eval", "evaluate LM metrics and k-shot tasks, side by side"),
    "harness": Command("lmforge.stages.harness", "run lm-evaluation-harness tasks on a checkpoint, offline"),
    "generate": Command("lmforge.stages.generate", "sample text from a checkpoint"),
    "chat": Command("lmforge.stages.chat", "chat with a model in the terminal"),
    "serve": Command("lmforge.stages.serve", "serve a model over an OpenAI-compatible API, with a chat page"),
    "export": Command("lmforge.stages.export", "export: hf (transformers decoders), gguf (llama.cpp)"),
    "import": Command("lmforge.stages.import_", "import: hf (a local transformers decoder directory)"),
    "scaling": Command("lmforge.stages.scaling", "scaling laws: sweep, fit, predict"),
    "report": Command("lmforge.stages.report", "write the run report (Markdown and HTML)"),
    "run": Command("lmforge.stages.run", "run every stage of a recipe as a cached DAG"),
}

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
    rows = []
    for name, cmd in COMMANDS.items():
        rows.append(f"  {name:<10} {cmd.summary}")
    return "\n".join(rows)


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
    cmd = COMMANDS.get(name)
    if cmd is None:
        import difflib

        near = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        print(f"lmforge: unknown command '{name}'.{hint} Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from lmforge.stages.invoke import invoke

    return invoke(importlib.import_module(cmd.module), name, rest)


if __name__ == "__main__":
    raise SystemExit(main())
