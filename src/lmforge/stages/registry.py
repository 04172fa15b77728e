"""The stage registry: subcommand → stage program module, in lifecycle order, with a one-line summary.

One table, read by the command line (``cli.py``: dispatch and ``--help``) and by ``lmforge run``
(``stages/run.py``: a recipe's stage kinds), so a new stage is added in one place. Modules are named,
not imported: a stage's module is imported only when it is used, so ``lmforge --help`` stays instant.
"""

from __future__ import annotations

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
