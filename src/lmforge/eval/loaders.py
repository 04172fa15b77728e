"""Read evaluation data into ``Doc``\\ s: the built-in formats of common benchmarks, and generic jsonl/csv.

Built-in formats (files as distributed, e.g. under ``../shared/data``):

- HellaSwag, 6 lines per item (``activity: ctx``, label, 4 endings), optionally ``.bz2``.
- ARC jsonl ``{id, question: {stem, choices: [{text, label}]}, answerKey}``.
- BoolQ jsonl ``{question, title, passage, answer: bool}`` and SQuAD v1.1 json (optionally inside a
  ``.zip``, ``data[].paragraphs[].qas[]``): ``eval/loaders_qa.py``, which splits the dev sets (the
  only splits here) into train and test without leakage (SQuAD by article, BoolQ by passage title).
- SST-2 style ``label sentence`` lines.
- GSM8K jsonl ``{question, answer}`` with the final answer after ``####``.
- Translation: two line-aligned files (optionally ``.gz``). Multi30k en→fr (Elliott et al. 2016) is
  scored on ``test_2016_flickr`` (1,000 pairs) with ``train`` (29,000) as the training split; the
  20,000 Europarl v7 pairs (Koehn 2005; Moses-tokenized, XML escapes undone) are split in file order,
  the last 1,000 the test split and the other 19,000 the training split.
- CoNLL-style token files (WNUT-17): one ``token\tTAG`` per line, a blank line between sentences
  (``read_conll``; for token classification, not a ``Doc`` task).
- HumanEval and MBPP (code generation, with MBPP's official split by task id and MBPP's train split
  as HumanEval's training split): ``eval/loaders_code.py``.

Prompt wording follows lm-evaluation-harness's task configs where one exists (HellaSwag's bracket
cleaning, ARC's ``Question: ...\\nAnswer:``, BoolQ's ``passage\\nQuestion: ...?\\nAnswer:``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import InputError
from lmforge.eval import loaders_code, loaders_qa, loaders_summarize
from lmforge.eval.fewshot import PromptFormat
from lmforge.eval.records import Doc, open_text, read_records


def _hellaswag_clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocessing: drop ' [title]' marks and bracketed tags."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(path: Path) -> list[Doc]:
    """HellaSwag in its 6-line format."""
    lines = open_text(path).split("\n")
    docs = []
    for i in range(0, len(lines) - 5, 6):
        ctx, label, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        if not label.strip().isdigit():
            raise InputError(f"{path}: line {i + 2}: expected the label 0-3, got {label!r}")
        docs.append(Doc(_hellaswag_clean(ctx), [_hellaswag_clean(e) for e in endings], int(label)))
    return docs


def arc(path: Path) -> list[Doc]:
    """ARC jsonl."""
    docs = []
    for row in read_records(path):
        q = row["question"]
        labels = [c["label"] for c in q["choices"]]
        docs.append(
            Doc(
                f"Question: {q['stem']}\nAnswer:",
                [c["text"] for c in q["choices"]],
                labels.index(row["answerKey"]),
            )
        )
    return docs


def labelled_lines(path: Path, labels: list[str], template: str = "{text}\nSentiment:") -> list[Doc]:
    """``label sentence`` lines (SST-2, MR, Subj, CR): a classification over ``labels`` (index = label)."""
    docs = []
    for n, line in enumerate(open_text(path).splitlines(), 1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if not label.isdigit() or int(label) >= len(labels):
            raise InputError(
                f"{path}:{n}: expected a label in 0..{len(labels) - 1} then the sentence, got {line[:40]!r}"
            )
        docs.append(Doc(template.format(text=text.strip()), list(labels), int(label)))
    return docs


def gsm8k(path: Path) -> list[Doc]:
    """GSM8K jsonl: the reference is the number after ``####``."""
    docs = []
    for r in read_records(path):
        answer = r["answer"].split("####")[-1].strip().replace(",", "")
        docs.append(Doc(f"Question: {r['question']}\nAnswer:", references=[answer]))
    return docs


def translation(src: Path, tgt: Path, src_name: str, tgt_name: str, *, unescape: bool = False) -> list[Doc]:
    """Two line-aligned files as generation docs ``{src_name}: line\\n{tgt_name}:`` (pairs with an
    empty side dropped); ``fields``: ``source`` (the source line) and the ``source_language`` and
    ``target_language`` names. ``unescape``: undo the XML escapes of Moses' tokenizer (``&apos;``,
    ``&quot;``, ``&amp;``, ``&#91;`` ...), which Europarl's tokenized release carries."""
    a, b = open_text(src).splitlines(), open_text(tgt).splitlines()
    if len(a) != len(b):
        raise InputError(f"{src} and {tgt} are not line-aligned: {len(a)} vs {len(b)} lines")
    if unescape:
        a, b = [html.unescape(s) for s in a], [html.unescape(t) for t in b]
    names = {"source_language": src_name, "target_language": tgt_name}
    return [
        Doc(f"{src_name}: {s}\n{tgt_name}:", references=[t], fields={"source": s, **names})
        for s, t in zip(a, b)
        if s.strip() and t.strip()
    ]


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of a ``token<TAB>tag`` file (blank lines between sentences) as ``(tokens, tags)``.

    Byte-order marks (U+FEFF, which WNUT-17's dev file holds alone on a line) are dropped.

    Raises:
        InputError: a line without a tab-separated tag.
    """
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for n, line in enumerate([*open_text(path).splitlines(), ""], 1):
        line = line.replace("\ufeff", "")
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        token, sep, tag = line.rstrip("\n").rpartition("\t")
        if not sep or not tag.strip():
            raise InputError(f"{path}:{n}: expected 'token<TAB>tag', got {line[:40]!r}")
        tokens.append(token)
        tags.append(tag.strip())
    return sentences


WNUT17_SPLITS = {"train": "wnut17train.conll", "dev": "emerging.dev.conll", "test": "emerging.test.annotated"}


def wnut17(data_dir: Path, split: str) -> list[tuple[list[str], list[str]]]:
    """WNUT-17 emerging entities (Derczynski et al. 2017) ``split`` (train, dev, test) under ``data_dir``."""
    if split not in WNUT17_SPLITS:
        raise InputError(f"wnut17 split {split!r}: expected one of {', '.join(WNUT17_SPLITS)}")
    return read_conll(Path(data_dir) / "wnut17" / WNUT17_SPLITS[split])


# built-in tasks: name → kind, documents, few-shot pool, task settings (data under a data_dir)


def _sst2(d: Path, split: str) -> list[Doc]:
    return labelled_lines(d / "sst2" / f"stsa.binary.{split}", ["negative", "positive"])


def _translation(d: Path, src: str, tgt: str, names: tuple[str, str], folder: str, split: str) -> list[Doc]:
    if folder == "multi30k":
        return translation(d / folder / f"{split}.{src}.gz", d / folder / f"{split}.{tgt}.gz", *names)
    return translation(
        d / folder / f"europarl-v7.fr-en.{src}",
        d / folder / f"europarl-v7.fr-en.{tgt}",
        *names,
        unescape=True,
    )


EUROPARL_TEST = 1000  # europarl_en_fr: the last 1,000 pairs are the test split, the rest train


def _europarl_en_fr(d: Path, split: str) -> list[Doc]:
    docs = _translation(d, "en", "fr", ("English", "French"), "europarl-en-fr-20k", "")
    return docs[-EUROPARL_TEST:] if split == "test" else docs[:-EUROPARL_TEST]


# code: no delimiter between a prompt and its code; HumanEval's stop strings are the Codex paper's
_CODE_FORMAT = PromptFormat(target_delimiter="")
_HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def _code(reader: str, file: str, split: str) -> Callable[[Path], list[Doc]]:
    """``eval/loaders_code.py``'s ``reader`` of ``data_dir/file``, ``split``."""
    return lambda d: getattr(loaders_code, reader)(d / file, split)


_HUMANEVAL = "humaneval/HumanEval.jsonl.gz"
_MBPP = "mbpp/mbpp.jsonl"


def _qa(reader: str, file: str, split: str) -> Callable[[Path], list[Doc]]:
    """``eval/loaders_qa.py``'s ``reader`` of ``data_dir/file``, ``split``."""
    return lambda d: getattr(loaders_qa, reader)(d / file, split)


def _summarize(reader: str) -> Callable[[Path], list[Doc]]:
    """A reader of ``eval/loaders_summarize.py``."""
    return lambda d: getattr(loaders_summarize, reader)(d)


@dataclass(frozen=True)
class Builtin:
    kind: str
    docs: Callable[[Path], list[Doc]]
    pool: Callable[[Path], list[Doc]] | None = None
    settings: dict = field(default_factory=dict)


def _multi30k(tgt: str, language: str, test_split: str, max_new_tokens: int) -> Builtin:
    """Multi30k English → ``tgt`` (``multi30k/{split}.{en,tgt}.gz``): ``test_split`` is scored, ``train``
    is the few-shot pool."""
    pair = ("English", language)
    return Builtin(
        "generation",
        lambda d: _translation(d, "en", tgt, pair, "multi30k", test_split),
        lambda d: _translation(d, "en", tgt, pair, "multi30k", "train"),
        {"metrics": ("bleu", "chrf"), "until": ("\n",), "max_new_tokens": max_new_tokens},
    )


BUILTIN: dict[str, Builtin] = {
    "hellaswag": Builtin(
        "multiple_choice", lambda d: hellaswag(d / "hellaswag" / "hellaswag_val_full.txt.bz2")
    ),
    "arc_easy": Builtin(
        "multiple_choice",
        lambda d: arc(d / "arc" / "ARC-Easy-Dev.jsonl"),
        lambda d: arc(d / "arc" / "ARC-Easy-Train.jsonl"),
    ),
    "arc_challenge": Builtin(
        "multiple_choice",
        lambda d: arc(d / "arc" / "ARC-Challenge-Dev.jsonl"),
        lambda d: arc(d / "arc" / "ARC-Challenge-Train.jsonl"),
    ),
    "boolq": Builtin(
        "multiple_choice",
        _qa("boolq", "boolq/dev.jsonl", "test"),
        _qa("boolq", "boolq/dev.jsonl", "train"),
    ),
    "sst2": Builtin("classification", lambda d: _sst2(d, "dev"), lambda d: _sst2(d, "train")),
    "squad": Builtin(
        "generation",
        _qa("squad", "squad-v1.1/dev-v1.1.json.zip", "test"),
        _qa("squad", "squad-v1.1/dev-v1.1.json.zip", "train"),
        {"metrics": ("exact_match", "f1"), "until": ("\n",), "max_new_tokens": 24},
    ),
    "gsm8k": Builtin(
        "generation",
        lambda d: gsm8k(d / "gsm8k" / "train.jsonl"),
        settings={
            "metrics": ("exact_match",),
            "until": ("\n\n", "Question:"),
            "max_new_tokens": 128,
            "answer_regex": r"####\s*(-?[0-9.,]+)",
        },
    ),
    "multi30k_en_de": _multi30k("de", "German", "val", 48),
    "humaneval": Builtin(
        "code",
        _code("humaneval", _HUMANEVAL, "test"),
        _code("mbpp_as_humaneval", _MBPP, "train"),  # HumanEval has no training split: MBPP's
        {"until": _HUMANEVAL_STOPS, "max_new_tokens": 256, "fmt": _CODE_FORMAT},
    ),
    "humaneval_pass10": Builtin(
        "code",
        _code("humaneval", _HUMANEVAL, "test"),
        _code("mbpp_as_humaneval", _MBPP, "train"),
        {
            "until": _HUMANEVAL_STOPS,
            "max_new_tokens": 256,
            "fmt": _CODE_FORMAT,
            "samples": 10,
            "temperature": 0.8,
            "top_p": 0.95,
            "ks": (1, 10),
        },
    ),
    "mbpp": Builtin(
        "code",
        _code("mbpp", _MBPP, "test"),
        _code("mbpp", _MBPP, "train"),  # ids 601-974; few-shot examples come from it too
        {"until": ("[DONE]",), "max_new_tokens": 256, "fmt": _CODE_FORMAT},
    ),
    "multi30k_en_fr": _multi30k("fr", "French", "test_2016_flickr", 80),
    "europarl_en_fr": Builtin(
        "generation",
        lambda d: _europarl_en_fr(d, "test"),
        lambda d: _europarl_en_fr(d, "train"),
        {"metrics": ("bleu", "chrf"), "until": ("\n",), "max_new_tokens": 128},
    ),
    # summarization (eval/loaders_summarize.py): MBPP code -> its description; WikiText body -> lead
    "mbpp_summarize": Builtin(
        "generation",
        _summarize("mbpp_test"),
        _summarize("mbpp_train"),
        {"metrics": ("rouge",), "until": ("\n",), "max_new_tokens": 48},
    ),
    "wikitext_lead": Builtin(
        "generation",
        _summarize("wikitext_test"),
        _summarize("wikitext_train"),
        {"metrics": ("rouge",), "until": ("\n",), "max_new_tokens": 512},  # a lead is ~300 words
    ),
}


def runs_code(task: str) -> bool:
    """Whether the task ``task`` (a built-in name or a YAML file) is a code task, whose completions run
    as programs (an unreadable YAML file is left for loading to report)."""
    if task in BUILTIN:
        return BUILTIN[task].kind == "code"
    if task.endswith((".yaml", ".yml")) and Path(task).is_file():
        from lmforge.config import load_yaml

        return load_yaml(task).get("kind") == "code"
    return False


def check_task_names(tasks: list[str], data_dir: str) -> None:
    """Raise ``ConfigError`` for a task that is neither built in nor a YAML file, or a built-in task
    without ``data_dir`` (what every stage naming tasks checks before any work)."""
    from lmforge.config import ConfigError

    for t in tasks:
        if not t.endswith((".yaml", ".yml")) and t not in BUILTIN:
            raise ConfigError("tasks", f"unknown task {t!r}; built-in: {', '.join(BUILTIN)}, or a .yaml file")
        if t in BUILTIN and not data_dir:
            raise ConfigError("data_dir", f"built-in task {t!r} needs data_dir (e.g. ../shared/data)")
