"""Summarization pairs from the data at hand: code → its description (MBPP) and article body → lead (WikiText).

Neither source takes the first sentences of a text as its target (that is sentence extraction, not
summarization); each target was written by people as a summary of the source:

- ``mbpp_summaries`` (MBPP, Austin et al. 2021): each problem's ``text`` is a one-sentence description
  written by the annotator of the program ``code``: code summarization, as in CodeXGLUE code-to-text.
  The source is the program only (the tests, which repeat the function's name with sample values, are
  left out). The target drops the task wording the descriptions open with ("Write a python
  function to", in 968 of the 974): it carries no content, and kept it alone scores ROUGE-1 0.45 and
  ROUGE-2 0.34 on the test split for any system that learns to print it; the target is what the
  program does ("find the minimum cost path ..."). MBPP's split by task id: 11-510 test, 601-974 train (511-600 validation, 1-10 the few-shot
  prompts of the paper, neither used). Fields: ``code``, ``name`` (the function the tests call),
  ``task_id``.
- ``wikitext_leads`` (WikiText-2, Merity et al. 2016): a Wikipedia article's lead section (the text
  before its first ``= = Section = =`` heading) is written, by the encyclopedia's own style rule
  (WP:LEAD), as a summary of the article; the source is the body with the lead removed. WikiText-2's
  valid split (60 articles) trains, its test split (62) is evaluated. Articles whose lead or body is
  shorter than ``min_lead_words`` / ``min_body_words`` are dropped (the tokenised files split a few
  displayed equations into spurious "articles"). The text is WikiText's: tokenised, rare words
  ``<unk>``. The query holds the body's first ``source_words`` words (a small model's context);
  ``fields["body"]`` holds all of it. Fields: ``title``, ``body``, ``body_sentences``.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmforge.eval.records import Doc, open_text, read_records

_FRAME = re.compile(
    r"^\s*(?:#+\s*)?write\s+(?:a\s+|an\s+)?(?:python\s+)?(?:function|program)\s+(?:to|that|which|for|of|where)\s+",
    re.I,
)
_TESTED = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_DEF = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def entry_point(code: str, tests: list[str]) -> str:
    """The function of ``code`` that ``tests`` call first (the problem's entry point); else its last ``def``."""
    defined = _DEF.findall(code)
    for test in tests:
        for called in _TESTED.findall(test):
            if called in defined:
                return called
    return defined[-1] if defined else ""


def description(text: str) -> str:
    """An MBPP ``text`` without its "Write a (python) function to/that" frame (module docstring)."""
    return _FRAME.sub("", text.strip(), count=1)


def mbpp_summaries(path: Path, first: int = 11, last: int = 510) -> list[Doc]:
    """MBPP problems with ``first <= task_id <= last`` as code → description pairs (module docstring)."""
    docs = []
    for r in read_records(path):
        if not first <= int(r["task_id"]) <= last:
            continue
        code = r["code"].replace("\r\n", "\n").strip()
        fields = {"code": code, "name": entry_point(code, r["test_list"]), "task_id": int(r["task_id"])}
        docs.append(Doc(f"Code:\n{code}\nDescription:", references=[description(r["text"])], fields=fields))
    return docs


_TITLE = re.compile(r"^= ([^=].*) =$")
_SENTENCE_END = re.compile(r"(?<=[.!?]) (?=[A-Z0-9\"'(<])")


def wikitext_articles(text: str) -> list[tuple[str, list[str], list[str]]]:
    """``(title, lead paragraphs, body paragraphs)`` of each article of a WikiText file; headings dropped."""
    articles: list[tuple[str, list[str], list[str]]] = []
    in_body = False
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        title = _TITLE.match(line)
        if title:
            articles.append((title.group(1).strip(), [], []))
            in_body = False
        elif line.startswith("= ="):
            in_body = True
        elif articles:
            articles[-1][2 if in_body else 1].append(line)
    return articles


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a tokenised paragraph: split after ``.``, ``!`` or ``?`` before a capital, digit or quote."""
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def wikitext_leads(
    path: Path, *, source_words: int = 200, min_lead_words: int = 40, min_body_words: int = 300
) -> list[Doc]:
    """Articles of a WikiText file as body → lead pairs (module docstring)."""
    docs = []
    for title, lead, body in wikitext_articles(open_text(path)):
        lead_text, body_text = " ".join(lead), " ".join(body)
        if len(lead_text.split()) < min_lead_words or len(body_text.split()) < min_body_words:
            continue
        source = " ".join(body_text.split()[:source_words])
        fields = {
            "title": title,
            "body": body_text,
            "body_sentences": [s for p in body for s in split_sentences(p)],
        }
        docs.append(
            Doc(f"Title: {title}\nArticle: {source}\nSummary:", references=[lead_text], fields=fields)
        )
    return docs


# readers of the built-in tasks (``loaders.BUILTIN``), data under ``d`` laid out as ../shared/data


def mbpp_test(d: Path) -> list[Doc]:
    return mbpp_summaries(Path(d) / "mbpp" / "mbpp.jsonl", 11, 510)


def mbpp_train(d: Path) -> list[Doc]:
    return mbpp_summaries(Path(d) / "mbpp" / "mbpp.jsonl", 601, 974)


def wikitext_test(d: Path) -> list[Doc]:
    return wikitext_leads(Path(d) / "wikitext-2-tokenized" / "test.txt")


def wikitext_train(d: Path) -> list[Doc]:
    return wikitext_leads(Path(d) / "wikitext-2-tokenized" / "valid.txt")
