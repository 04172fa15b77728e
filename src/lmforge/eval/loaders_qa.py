"""Question answering data: SQuAD v1.1 and BoolQ with leak-free train/test splits, and their passages.

Only the dev sets of both are distributed here (``../shared/data``), so each is split in two; the
test split is what a task's ``docs`` hold and the train split is its ``fewshot_pool`` (what
``finetune.task`` trains on and a classic baseline fits on). Nothing about a test item is in the
train split:

- SQuAD v1.1 (Rajpurkar et al. 2016) is split **by article**: the last quarter of the articles in
  file order (12 of the dev set's 48, 2,447 of its 10,570 questions) is the test split, the rest
  (36 articles, 8,123 questions) the train split. A paragraph, and every question about it, is on
  one side only; so is every other paragraph of the same article. One doc per question; the
  references are all its given answers (duplicates dropped: EM/F1 take the best over them). The
  prompt is lm-evaluation-harness's ``Title / Background / Question / Answer:``. Fields:
  ``title``, ``context``, ``question``.
- BoolQ (Clark et al. 2019) is split **by passage title**: an item is in the test split when the
  MD5 of its title is 0 mod 4 (837 of 3,270 questions, 61.8% "yes"; train 2,433, 62.3% "yes").
  Every question about a page is on the same side; a passage that appears under two titles (one
  does in the dev set) is keyed by the smaller one, so it cannot straddle either. The hash does not
  depend on the file's order. Choices ``["no", "yes"]``, lm-evaluation-harness's prompt
  ``passage\\nQuestion: ...?\\nAnswer:``. Fields: ``title``, ``passage``, ``question``.

The training splits' passages are pretraining text through the data source ``task:squad@DIR``
(``eval/corpus.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmforge.errors import InputError
from lmforge.eval.records import Doc, open_text, read_records

SPLITS = ("train", "test", "all")
SQUAD_TEST_FRACTION = 0.25  # of the articles, the last ones in file order
BOOLQ_TEST_BUCKETS = 4  # md5(title) % 4 == 0 is the test split


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)}")


def squad_articles(path: Path, split: str = "all") -> list[dict]:
    """The SQuAD articles (``{"title", "paragraphs"}``) of ``split`` (module docstring).

    Raises:
        InputError: an unknown split, or a split asked of a file with fewer than two articles.
    """
    _check_split(split)
    try:
        articles = json.loads(open_text(path))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not SQuAD json with a 'data' list ({e})") from None
    if split == "all":
        return articles
    if len(articles) < 2:
        raise InputError(f"{path}: {len(articles)} article(s); a train/test split needs at least two")
    n_test = max(1, round(len(articles) * SQUAD_TEST_FRACTION))
    return articles[-n_test:] if split == "test" else articles[:-n_test]


def squad(path: Path, split: str = "all") -> list[Doc]:
    """SQuAD v1.1 json: one generation doc per question, every given answer a reference."""
    docs = []
    for article in squad_articles(path, split):
        title = article["title"].replace("_", " ")
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                refs = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                question = qa["question"].strip()
                query = f"Title: {title}\n\nBackground: {context}\n\nQuestion: {question}\n\nAnswer:"
                fields = {"title": title, "context": context, "question": question}
                docs.append(Doc(query, references=refs, fields=fields))
    return docs


def boolq_group(rows: list[dict]) -> list[str]:
    """Per row, the key its split is decided by: the smallest title its passage appears under."""
    titles: dict[str, str] = {}
    for r in rows:
        seen = titles.get(r["passage"])
        titles[r["passage"]] = r["title"] if seen is None else min(seen, r["title"])
    return [titles[r["passage"]] for r in rows]


def is_boolq_test(key: str) -> bool:
    """Whether the group ``key`` (a passage title) is in the test split."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % BOOLQ_TEST_BUCKETS == 0


def boolq_rows(path: Path, split: str = "all") -> list[dict]:
    """BoolQ records of ``split`` (module docstring); every record needs a title to be split."""
    _check_split(split)
    rows = list(read_records(path))
    if split == "all":
        return rows
    missing = [i for i, r in enumerate(rows, 1) if not r.get("title")]
    if missing:
        raise InputError(f"{path}:{missing[0]}: no title; BoolQ is split by passage title")
    want = split == "test"
    return [r for r, key in zip(rows, boolq_group(rows)) if is_boolq_test(key) == want]


def boolq(path: Path, split: str = "all") -> list[Doc]:
    """BoolQ jsonl as a yes/no choice."""
    docs = []
    for r in boolq_rows(path, split):
        fields = {"title": r.get("title", ""), "passage": r["passage"], "question": r["question"]}
        query = f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:"
        docs.append(Doc(query, ["no", "yes"], int(bool(r["answer"])), fields=fields))
    return docs
