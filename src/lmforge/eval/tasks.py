"""Evaluation tasks: data + prompt format + scoring, run on a causal LM with k-shot prompts.

Kinds:

- ``multiple_choice``: each choice is scored by the log-likelihood of ``delimiter + choice`` after the
  prompt; ``acc`` takes the highest sum, ``acc_norm`` the highest sum divided by the choice's length in
  characters (lm-evaluation-harness's ``acc`` and ``acc_norm``).
- ``classification``: the same scoring over the label words; reports accuracy, macro-F1 and per-class
  precision/recall (``eval/classification.py``).
- ``generation``: greedy decoding with the engine until a stop string; the output (optionally the first
  match of ``answer_regex``) is scored by exact match, SQuAD F1, BLEU, chrF or ROUGE (``metrics.py``).
- ``code``: ``samples`` completions per problem (greedy when ``temperature`` is 0, else sampled with
  ``top_p``; row seeds follow ``seed``), each run with the problem's tests in the sandbox and scored
  by the unbiased pass@k for ``ks`` (``eval/codegen.py``).

Tokenisation of a (context, continuation) pair is lm-evaluation-harness's: the continuation's tokens
are ``encode(context + continuation)`` past ``len(encode(context))``; the context is preceded by
``<|bos|>`` (how lmforge documents start). Sequences longer than ``block_size + 1`` lose context tokens
from the left. ``HFLM``-style batching: pairs are scored longest first, right-padded.

A task comes from a built-in name (``BUILTIN``; data under ``data_dir``) or a YAML file (``TaskSpec``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lmforge.config import ConfigError, from_dict, load_yaml, opt
from lmforge.errors import InputError
from lmforge.eval.fewshot import PromptFormat, build_prompt, select_shots
from lmforge.eval.loaders import BUILTIN
from lmforge.eval.records import Doc, read_records
from lmforge.eval.sandbox import Limits

if TYPE_CHECKING:
    from lmforge.eval.baselines import Baseline

log = logging.getLogger(__name__)

KINDS = ("multiple_choice", "classification", "generation", "code")


@dataclass
class Task:
    """A loaded task: documents, optional few-shot pool, prompt format and scoring settings."""

    name: str
    kind: str
    docs: list[Doc]
    fewshot_pool: list[Doc] | None = None  # None: shots come from ``docs`` (the doc itself excluded)
    fmt: PromptFormat = PromptFormat()
    metrics: tuple[str, ...] = ()  # generation metrics (``metrics.GENERATION_METRICS``)
    labels: tuple[str, ...] = ()  # classification: class names (default: the choices)
    until: tuple[str, ...] = ("\n",)  # generation stop strings
    max_new_tokens: int = 32
    answer_regex: str = ""  # generation: score the first match (group 1 if any) instead of the output
    samples: int = 1  # code: completions per problem (the n of pass@k)
    temperature: float = 0.0  # code: 0 = greedy
    top_p: float | None = None  # code: nucleus mass when sampling
    ks: tuple[int, ...] = (1,)  # code: the k of pass@k
    limits: Limits = Limits()  # code: sandbox limits per program
    workers: int = 2  # code: programs run at once
    unsafe_exec: bool = False  # code: run the programs without the sandbox (eval/sandbox.py)


# --------------------------------------------------------------------------------------------------
# the model side


def pair_ids(tok: Tokenizer, bos_id: int, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids with <|bos|>, continuation ids)``: the continuation's tokens are those of
    ``context + continuation`` past the context's, unless the boundary merged (then encoded apart).
    Scoring (``LM``) and task fine-tuning (``finetune.task``) tokenise alike through this."""
    ctx = tok.encode(context, add_special_tokens=False).ids
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    if whole[: len(ctx)] != ctx:
        return [bos_id] + ctx, tok.encode(continuation, add_special_tokens=False).ids
    return [bos_id] + ctx, whole[len(ctx) :]


class LM:
    """A causal LM and its tokenizer, as tasks (and the lm-evaluation-harness adapter) call it.

    Args:
        model: an lmforge ``Decoder`` (any ``forward(idx [B, T]) -> logits [B, T, V]`` for scoring).
        tok: its tokenizer; ``bos_id`` is prepended to every context.
        batch_size: sequences per forward pass.
    """

    def __init__(self, model: torch.nn.Module, tok: Tokenizer, *, bos_id: int, batch_size: int = 16):
        self.model, self.tok, self.bos_id, self.batch_size = model, tok, bos_id, batch_size
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def pair_ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``(context ids with <|bos|>, continuation ids)`` (module docstring)."""
        return pair_ids(self.tok, self.bos_id, context, continuation)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each ``(context, continuation)``: summed log-prob of the continuation, and whether greedy
        decoding would produce it exactly."""
        return self.loglikelihood_tokens([self.pair_ids(c, x) for c, x in pairs])

    @torch.no_grad()
    def loglikelihood_tokens(
        self, encoded: Sequence[tuple[list[int], list[int]]]
    ) -> list[tuple[float, bool]]:
        """``loglikelihood`` over ``(context ids, continuation ids)`` pairs."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                seqs = [(encoded[i][0] + encoded[i][1])[-(self.block_size + 1) :] for i in batch]
                width = max(len(s) for s in seqs) - 1
                idx = torch.zeros(len(seqs), width, dtype=torch.long)
                for r, s in enumerate(seqs):
                    idx[r, : len(s) - 1] = torch.tensor(s[:-1])
                logp = F.log_softmax(self.model(idx.to(self.device)).float(), dim=-1)  # [B, T, V]
                for r, (i, s) in enumerate(zip(batch, seqs)):
                    n = len(encoded[i][1])
                    if n == 0:
                        out[i] = (0.0, True)
                        continue
                    target = torch.tensor(s[-n:], device=self.device)
                    rows = logp[r, len(s) - 1 - n : len(s) - 1]  # [n, V]
                    ll = rows.gather(-1, target[:, None]).sum().item()
                    out[i] = (ll, bool((rows.argmax(-1) == target).all()))
        finally:
            self.model.train(was_training)
        return out

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Log-likelihood of each whole text after ``<|bos|>``, in disjoint windows of ``block_size``
        targets, each seeing as much preceding text as fits the context."""
        out = []
        for text in texts:
            full = [self.bos_id] + self.encode(text)
            pieces = []
            for start in range(1, len(full), self.block_size):
                cont = full[start : start + self.block_size]
                pieces.append((full[max(0, start - (self.block_size - len(cont) + 1)) : start], cont))
            out.append(sum(ll for ll, _ in self.loglikelihood_tokens(pieces)))
        return out

    def generate(
        self,
        contexts: Sequence[str],
        until: Sequence[str],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[str]:
        """Continuations of ``contexts`` (greedy by default), each cut before the first string of
        ``until``. When sampling, context ``i`` draws from a generator seeded ``seed + i``, whatever the
        batching (repeat a context to draw several samples of it)."""
        from lmforge.inference.engine import Engine
        from lmforge.inference.rows import SamplingParams, default_stop_ids

        engine = Engine(self.model, self.tok)
        out = []
        for start in range(0, len(contexts), self.batch_size):
            params = SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if seed is None else seed + start,
                stop=list(until),
                stop_ids=default_stop_ids(self.tok),
            )
            prompts = [[self.bos_id] + self.encode(c) for c in contexts[start : start + self.batch_size]]
            out += [c.text for c in engine.generate(prompts, params)]
        return out


# --------------------------------------------------------------------------------------------------
# prompts and scoring


def prompts(task: Task, k: int, seed: int) -> list[str]:
    """The k-shot context of every document of ``task``."""
    pool = task.fewshot_pool if task.fewshot_pool is not None else task.docs
    same = task.fewshot_pool is None
    out = []
    for i, doc in enumerate(task.docs):
        shots = select_shots(pool, k, seed, i, same_split=same)
        out.append(build_prompt(doc.query, [(s.query, s.target) for s in shots], task.fmt))
    return out


def evaluate_task(lm: LM, task: Task, *, k: int = 0, seed: int = 1234) -> dict[str, Any]:
    """Run ``task`` with ``k`` shots; returns ``{"metrics": {...}, "n": int, "example": first prompt,
    "tables": report tables}`` (classification: the confusion matrix)."""
    contexts = prompts(task, k, seed)
    tables: list[dict[str, Any]] = []
    if task.kind in ("multiple_choice", "classification"):
        metrics = _score_choices(lm, task, contexts, tables)
    elif task.kind == "code":
        metrics = _score_code(lm, task, contexts, seed, tables)
    else:
        metrics = _score_generation(lm, task, contexts)
    log.info("%s (%d-shot, %d docs): %s", task.name, k, len(task.docs), _brief(metrics))
    example = contexts[0] if contexts else ""
    return {"metrics": metrics, "n": len(task.docs), "k": k, "example": example, "tables": tables}


def _score_choices(lm: LM, task: Task, contexts: list[str], tables: list[dict[str, Any]]) -> dict[str, float]:
    delim = task.fmt.target_delimiter
    pairs = [(ctx, delim + choice) for ctx, doc in zip(contexts, task.docs) for choice in doc.choices]
    scores = [ll for ll, _ in lm.loglikelihood(pairs)]
    picks, picks_norm, at = [], [], 0
    for doc in task.docs:
        lls = scores[at : at + len(doc.choices)]
        at += len(doc.choices)
        picks.append(max(range(len(lls)), key=lls.__getitem__))
        norm = [ll / max(1, len(c)) for ll, c in zip(lls, doc.choices)]
        picks_norm.append(max(range(len(norm)), key=norm.__getitem__))
    return _choice_metrics(task, picks, picks_norm, tables)


def _choice_metrics(
    task: Task, picks: list[int], picks_norm: list[int] | None, tables: list[dict[str, Any]]
) -> dict[str, float]:
    """Accuracy (and ``acc_norm`` when length-normalised picks exist) or classification metrics."""
    golds = [doc.gold for doc in task.docs]
    if task.kind == "multiple_choice":
        n = len(golds)
        out = {"acc": sum(p == g for p, g in zip(picks, golds)) / n}
        if picks_norm is not None:
            out["acc_norm"] = sum(p == g for p, g in zip(picks_norm, golds)) / n
        return out
    from lmforge.eval.classification import classification_metrics, confusion_table, flat_metrics

    names = task.labels or tuple(task.docs[0].choices)
    result = classification_metrics([names[g] for g in golds], [names[p] for p in picks], labels=list(names))
    tables.append(confusion_table(result))
    return flat_metrics(result)


def _score_generation(lm: LM, task: Task, contexts: list[str]) -> dict[str, float]:
    outputs = lm.generate(contexts, task.until, task.max_new_tokens)
    return _generation_metrics(task, [extract_answer(o, task.answer_regex) for o in outputs])


def _generation_metrics(task: Task, predictions: list[str]) -> dict[str, float]:
    from lmforge.eval.metrics import score_generations

    return score_generations(predictions, [d.references for d in task.docs], task.metrics)


def _score_code(
    lm: LM, task: Task, contexts: list[str], seed: int, tables: list[dict[str, Any]]
) -> dict[str, float]:
    n = task.samples
    outputs = lm.generate(
        [c for c in contexts for _ in range(n)],
        task.until,
        task.max_new_tokens,
        temperature=task.temperature,
        top_p=task.top_p,
        seed=seed,
    )
    return _code_metrics(task, [outputs[i * n : (i + 1) * n] for i in range(len(contexts))], tables)


def _code_metrics(task: Task, completions: list[list[str]], tables: list[dict[str, Any]]) -> dict[str, float]:
    from lmforge.eval.codegen import score_completions, status_table

    scored = score_completions(
        task.docs,
        completions,
        ks=task.ks,
        until=task.until,
        limits=task.limits,
        workers=task.workers,
        unsafe_exec=task.unsafe_exec,
    )
    tables.append(status_table(scored["results"]))
    return scored["metrics"]


def evaluate_baseline(baseline: Baseline, task: Task) -> dict[str, Any]:
    """Run a classic ``baseline`` on ``task`` and score its outputs as ``evaluate_task`` scores the
    model's; same result shape (``k`` is 0: a baseline sees no prompt).

    Raises:
        ValueError: the baseline does not apply to ``task`` or returned malformed outputs.
    """
    from lmforge.eval.baselines import check_outputs

    if not baseline.applies(task):
        raise ValueError(f"baseline {baseline.name} does not apply to task {task.name}")
    outputs = baseline.run(task)
    check_outputs(baseline, task, outputs)
    tables: list[dict[str, Any]] = []
    if task.kind in ("multiple_choice", "classification"):
        metrics = _choice_metrics(task, outputs, None, tables)
    elif task.kind == "code":
        ks = tuple(k for k in task.ks if all(len(c) >= k for c in outputs))
        metrics = _code_metrics(replace(task, ks=ks or (1,)), outputs, tables)
    else:
        metrics = _generation_metrics(task, [o.strip() for o in outputs])
    log.info("%s by baseline %s (%d docs): %s", task.name, baseline.name, len(task.docs), _brief(metrics))
    return {"metrics": metrics, "n": len(task.docs), "k": 0, "example": "", "tables": tables}


def extract_answer(output: str, regex: str) -> str:
    """``output`` stripped, or the first match of ``regex`` in it (group 1 when the pattern has one)."""
    if not regex:
        return output.strip()
    m = re.search(regex, output)
    if m is None:
        return ""
    return (m.group(1) if m.groups() else m.group(0)).strip()


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:4])


# --------------------------------------------------------------------------------------------------
# built-in tasks and YAML task files


@dataclass
class TaskSpec:
    """A task described in YAML over a jsonl or csv file (``docs/eval.md`` has examples)."""

    name: str = opt("", "task name (default: the YAML file's stem)")
    kind: Literal["multiple_choice", "classification", "generation", "code"] = opt(
        "multiple_choice", "how it is scored"
    )
    path: str = opt("", "jsonl or csv file of documents, relative to the YAML file", path=True)
    fewshot_path: str = opt("", "file of few-shot examples (default: the documents, each excluding itself)")
    template: str = opt("{question}", "the query: a Python format string over a row's fields")
    choices: str = opt("choices", "multiple choice: the field holding the list of choices")
    labels: list[str] = opt([], "classification: label words; the answer field holds an index or a label")
    answer: str = opt("answer", "field of the answer: choice index, letter or text; or the reference(s)")
    instruction: str = opt("", "text before the examples")
    example_separator: str = opt("\n\n", "between examples")
    target_delimiter: str = opt(" ", "between a query and its answer")
    metrics: list[str] = opt(["exact_match"], "generation metrics: exact_match f1 bleu chrf rouge")
    until: list[str] = opt(["\n"], "generation stop strings")
    max_new_tokens: int = opt(32, "generation length limit")
    answer_regex: str = opt("", "generation: score the first match of this regex (group 1 if any)")
    test: str = opt("test", "code: field of the tests (a string, or a list of assert lines)")
    prefix: str = opt("", "code: field of the program's start the completion continues ('' = none)")
    entry_point: str = opt("", "code: field naming the function the tests call ('' = read from the asserts)")
    check: bool = opt(
        False, "code: end the program with check(<entry point>) (HumanEval's tests define check)"
    )
    samples: int = opt(1, "code: completions per problem (the n of pass@k)")
    temperature: float = opt(0.0, "code: sampling temperature (0 = greedy, then samples must be 1)")
    top_p: float = opt(1.0, "code: nucleus mass when sampling (1 = off)")
    ks: list[int] = opt([1], "code: the k of pass@k (each <= samples)")

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("path", "a task file needs the path of its data (jsonl or csv)")
        if self.kind == "classification" and not self.labels:
            raise ConfigError("labels", "a classification task needs its label words")
        if self.kind == "code":
            from lmforge.eval.codegen import check_sampling

            check_sampling(self.samples, self.temperature, self.top_p, self.ks)
            if self.check and not self.entry_point:
                raise ConfigError("check", "check(<entry point>) needs entry_point: the field naming it")
        from lmforge.eval.metrics import GENERATION_METRICS

        bad = [m for m in self.metrics if m not in GENERATION_METRICS]
        if bad:
            raise ConfigError("metrics", f"unknown metric {bad[0]!r}; valid: {', '.join(GENERATION_METRICS)}")


def _spec_docs(spec: TaskSpec, path: Path) -> list[Doc]:
    docs = []
    for n, row in enumerate(read_records(path), 1):
        try:
            query = spec.template.format(**row)
            if spec.kind == "code":
                docs.append(_spec_code_doc(spec, row, query))
                continue
            answer = row[spec.answer]
            fields = {k: v for k, v in row.items() if k != spec.answer}  # what baselines may read
            if spec.kind == "generation":
                refs = [answer] if isinstance(answer, str) else [str(a) for a in answer]
                docs.append(Doc(query, references=refs, fields=fields))
                continue
            choices = list(spec.labels) if spec.kind == "classification" else list(row[spec.choices])
            docs.append(Doc(query, choices, _answer_index(answer, choices), fields=fields))
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"{path}: row {n}: {type(e).__name__}: {e}") from None
    return docs


def _spec_code_doc(spec: TaskSpec, row: dict[str, Any], query: str) -> Doc:
    """A code problem of a YAML task: tests, optional prefix and reference, ``fields`` with ``entry_point``."""
    from lmforge.eval.loaders_code import called_function

    tests = row[spec.test]
    asserts = [str(t) for t in tests] if isinstance(tests, list) else str(tests).splitlines()
    test = "\n".join(asserts) + "\n"
    fields = {k: v for k, v in row.items() if k != spec.answer}
    if spec.entry_point:
        fields["entry_point"] = str(row[spec.entry_point])
    elif any(a.startswith("assert") for a in asserts):  # top-level asserts (MBPP's form)
        try:
            fields["entry_point"] = called_function([a for a in asserts if a.startswith("assert")])
        except (InputError, SyntaxError):
            pass  # no function called (or not one statement per line): no entry point
    if spec.check:
        test += f"\ncheck({fields['entry_point']})\n"
    answer = row.get(spec.answer)
    refs = [] if answer is None else [str(answer)]
    prefix = str(row[spec.prefix]) if spec.prefix else ""
    return Doc(query, references=refs, test=test, code_prefix=prefix, fields=fields)


def _answer_index(answer: Any, choices: list[str]) -> int:
    """An answer given as an index, a letter (A, B, ...) or the choice's text → its index."""
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        i = int(answer)
    elif isinstance(answer, str) and answer in choices:
        i = choices.index(answer)
    elif isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
        i = ord(answer.upper()) - ord("A")
    else:
        raise ValueError(f"answer {answer!r} is not an index, a letter or one of {choices}")
    if not 0 <= i < len(choices):
        raise ValueError(f"answer {answer!r} is outside the {len(choices)} choices")
    return i


def load_task(name_or_path: str, *, data_dir: str | Path = "", limit: int = 0) -> Task:
    """A built-in task by name (data under ``data_dir``) or a YAML task file; at most ``limit`` docs.

    Raises:
        ConfigError: an unknown name, or a bad YAML task file.
        InputError: missing or malformed data.
    """
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        spec = from_dict(TaskSpec, load_yaml(path), prefix=path.name)
        base = path.parent
        docs = _spec_docs(spec, base / spec.path)
        pool = _spec_docs(spec, base / spec.fewshot_path) if spec.fewshot_path else None
        fmt = PromptFormat(spec.instruction, spec.example_separator, spec.target_delimiter)
        task = Task(
            spec.name or path.stem,
            spec.kind,
            docs,
            pool,
            fmt,
            tuple(spec.metrics),
            tuple(spec.labels),
            tuple(spec.until),
            spec.max_new_tokens,
            spec.answer_regex,
        )
        if spec.kind == "code":
            task.samples, task.temperature, task.ks = spec.samples, spec.temperature, tuple(spec.ks)
            task.top_p = None if spec.top_p == 1 else spec.top_p
    elif name_or_path in BUILTIN:
        if not data_dir:
            raise ConfigError(
                "data_dir", f"built-in task {name_or_path!r} needs data_dir (e.g. ../shared/data)"
            )
        b, d = BUILTIN[name_or_path], Path(data_dir)
        task = Task(name_or_path, b.kind, b.docs(d), b.pool(d) if b.pool else None, **b.settings)
    else:
        raise ConfigError(
            "tasks", f"unknown task {name_or_path!r}; built-in: {', '.join(BUILTIN)}, or a .yaml task file"
        )
    if limit:
        task.docs = task.docs[:limit]
    if not task.docs:
        raise InputError(f"task {task.name}: no documents")
    return task
