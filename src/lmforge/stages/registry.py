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
    decodes: bool = False  # its work is decoding: OpenMP threads spin (``runtime.spin_for_decoding``)


class Group(NamedTuple):
    """A command whose stages are methods (``lmforge finetune sft``): its line in ``lmforge --help``
    and the text of ``lmforge <group> --help`` around the table of its methods."""

    summary: str
    purpose: str  # what the group does, under the usage line
    note: str  # after the table: how a recipe names a method, pointers


# stage → program, in lifecycle order. A method of a group is "<group> <method>" on the command line
# and "<group>.<method>" as a recipe's stage kind (what the manifest records).
STAGES: dict[str, Command] = {
    "data": Command("lmforge.stages.data", "read sources, clean and deduplicate, write parquet shards"),
    "tokenizer": Command("lmforge.stages.tokenizer", "train a tokenizer and write token shards"),
    "pretrain": Command("lmforge.stages.pretrain", "pretrain a decoder-only transformer"),
    "finetune sft": Command(
        "lmforge.stages.finetune.sft", "supervised fine-tuning on chat / instruction data (assistant tokens)"
    ),
    "finetune lora": Command(
        "lmforge.stages.finetune.lora", "SFT with LoRA adapters (PEFT layout; optionally merged)"
    ),
    "finetune classify": Command(
        "lmforge.stages.finetune.classify", "sequence classification head + bag-of-words baseline"
    ),
    "finetune multitask": Command(
        "lmforge.stages.finetune.multitask", "one shared trunk, one classification head per task"
    ),
    "finetune dapt": Command(
        "lmforge.stages.finetune.dapt", "domain-adaptive continued pretraining with replay"
    ),
    "finetune contrastive": Command(
        "lmforge.stages.finetune.contrastive", "sentence embeddings with InfoNCE on pairs"
    ),
    "finetune ner": Command(
        "lmforge.stages.finetune.ner", "token classification (NER) + lookup and CRF baselines"
    ),
    "finetune qa": Command(
        "lmforge.stages.finetune.qa", "extractive QA: a span head on an encoder, SQuAD EM/F1"
    ),
    "finetune task": Command(
        "lmforge.stages.finetune.task", "learn eval tasks' training splits in their zero-shot prompt format"
    ),
    "align collect": Command(
        "lmforge.stages.align.collect",
        "sample replies and serve a web page where people rank them (JSONL store)",
    ),
    "align label": Command(
        "lmforge.stages.align.label",
        "on-policy preference pairs: sample replies, a reward model picks the best and the worst",
    ),
    "align dpo": Command(
        "lmforge.stages.align.dpo", "direct preference optimisation (or IPO) on chosen/rejected pairs"
    ),
    "align reward": Command(
        "lmforge.stages.align.reward", "reward model (Bradley–Terry on pairs or Plackett–Luce on rankings)"
    ),
    "align ppo": Command(
        "lmforge.stages.align.ppo", "PPO-RLHF: rollouts scored by a reward model, value head, GAE, KL penalty"
    ),
    "align grpo": Command(
        "lmforge.stages.align.grpo",
        "GRPO with verifiable rewards (arithmetic #### N answers, or a code task's tests in the sandbox)",
    ),
    "align split": Command(
        "lmforge.stages.align.split",
        "split preference files by prompt: training / held-out pairs, SFT replies, pretraining text",
    ),
    "align arithmetic": Command(
        "lmforge.stages.align.arithmetic", "write generated arithmetic problems (SFT and GRPO files)"
    ),
    "eval": Command("lmforge.stages.eval", "evaluate LM metrics and k-shot tasks, side by side"),
    "harness": Command("lmforge.stages.harness", "run lm-evaluation-harness tasks on a checkpoint, offline"),
    "generate": Command("lmforge.stages.generate", "sample text from a checkpoint", decodes=True),
    "chat": Command("lmforge.stages.chat", "chat with a model in the terminal", decodes=True),
    "serve": Command("lmforge.stages.serve", "serve a model over an OpenAI-compatible API, with a chat page"),
    "export hf": Command(
        "lmforge.stages.export.hf", "Hugging Face transformers directory (Llama, Qwen2, Qwen3 or Gemma)"
    ),
    "export gguf": Command(
        "lmforge.stages.export.gguf", "GGUF file (llama architecture) for llama.cpp-family tools"
    ),
    "import hf": Command(
        "lmforge.stages.import_.hf",
        "a local Hugging Face decoder directory (Llama, GPT-2, Qwen2/3, Mistral, Gemma) → a checkpoint",
    ),
    "scaling sweep": Command(
        "lmforge.stages.scaling.sweep", "train a grid of model sizes × token budgets (cached points)"
    ),
    "scaling fit": Command(
        "lmforge.stages.scaling.fit", "fit Kaplan and Chinchilla laws, bootstrap intervals, optimal N, D"
    ),
    "scaling predict": Command(
        "lmforge.stages.scaling.predict",
        "predict a larger model's loss from a fit; train it and report the error (check)",
    ),
    "report": Command("lmforge.stages.report", "write the run report (Markdown and HTML)"),
    "run": Command("lmforge.stages.run", "run every stage of a recipe as a cached DAG"),
}

GROUPS: dict[str, Group] = {
    "finetune": Group(
        "fine-tune: sft, lora, classify, multitask, dapt, contrastive, ner, task, qa",
        "Fine-tune a checkpoint (a checkpoint directory or a training stage directory such as runs/x/pretrain).",
        "In a recipe a method is the stage kind `finetune.<method>`:\n"
        '  classify: {stage: finetune.classify, model: "@pretrain", train: ...}   (docs/finetune.md)',
    ),
    "align": Group(
        "align: collect (ranking page), reward, dpo, ppo, grpo",
        "Align a checkpoint (a checkpoint directory or a training stage directory such as runs/x/sft).",
        "In a recipe a method is the stage kind `align.<method>`:\n"
        '  dpo: {stage: align.dpo, model: "@sft", train: [pairs.jsonl]}\n'
        "The loop with people in it: collect (rank replies in a browser) → reward → dpo or ppo → collect\n"
        'again with the new policy (docs/align.md, "Iterating").',
    ),
    "export": Group(
        "export: hf (transformers decoders), gguf (llama.cpp)",
        "Export a decoder checkpoint (a checkpoint directory or a training stage directory such as runs/x/sft).",
        "In a recipe a method is the stage kind `export.<method>`:\n"
        '  export-hf: {stage: export.hf, model: "@sft"}   (docs/interop.md)',
    ),
    "import": Group(
        "import: hf (a local transformers decoder directory)",
        "Import a model as an lmforge checkpoint that fine-tuning, eval, generate and serve read.",
        "Nothing is downloaded: --model is a local directory (e.g. one written by transformers'\n"
        "save_pretrained) or pretrained:NAME of an installed weights package (docs/interop.md).",
    ),
    "scaling": Group(
        "scaling laws: sweep, fit, predict",
        "Measure scaling laws on your corpus: sweep a grid of small decoders, fit L(N, D), predict a larger one.",
        "In a recipe a method is the stage kind `scaling.<method>`:\n"
        '  fit: {stage: scaling.fit, sweep: "@sweep"}   (see recipes/scaling-cpu.yaml)',
    ),
}


def commands() -> dict[str, str]:
    """The top-level commands of ``lmforge --help`` in lifecycle order: command → one-line summary."""
    out: dict[str, str] = {}
    for name, cmd in STAGES.items():
        head = name.split(" ")[0]
        if head not in out:
            out[head] = GROUPS[head].summary if head in GROUPS else cmd.summary
    return out


def methods(group: str) -> dict[str, Command]:
    """The methods of ``group``: method → its stage program."""
    prefix = group + " "
    return {name[len(prefix) :]: cmd for name, cmd in STAGES.items() if name.startswith(prefix)}


def kinds() -> list[str]:
    """Every stage kind a recipe can name (``pretrain``, ``finetune.sft``, ...)."""
    return [name.replace(" ", ".") for name in STAGES if name != "run"]
