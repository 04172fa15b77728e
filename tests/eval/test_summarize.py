"""Summarization: the MBPP and WikiText pair builders and the classic baselines, on hand-built cases;
the built-in tasks on ../shared/data (skipped without it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.eval.baselines import get_baseline
from lmforge.eval.classic.summarize import (
    code_tokens,
    first_words,
    identifier_words,
    lead_k,
    lead_length,
    name_template,
    nearest_descriptions,
    textrank,
)
from lmforge.eval.loaders_summarize import (
    description,
    entry_point,
    mbpp_summaries,
    split_sentences,
    wikitext_articles,
    wikitext_leads,
)
from lmforge.eval.records import Doc
from lmforge.eval.tasks import Task, evaluate_baseline, load_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)"
)


# ---------------------------------------------------------------------------------------------- pairs


def test_description_drops_the_task_frame_only() -> None:
    assert description("Write a python function to find the sum of digits.") == "find the sum of digits."
    assert description("Write a function that matches a word.") == "matches a word."
    assert description("write a program to print a cube.") == "print a cube."
    # no frame: unchanged; the frame is removed only at the start
    assert description("Find the sum. Write a function to x.") == "Find the sum. Write a function to x."


def test_entry_point_is_the_function_the_tests_call() -> None:
    code = "def helper(x):\n    return x\n\ndef solve(a):\n    return helper(a)\n"
    assert entry_point(code, ["assert solve(3) == 3"]) == "solve"
    # a call inside the assert to something not defined here (math.isclose) is skipped
    assert entry_point(code, ["assert math.isclose(helper(2), 2)"]) == "helper"
    assert entry_point(code, []) == "solve"  # no tests: the last def
    assert entry_point("x = 1", ["assert x == 1"]) == ""


def _mbpp_file(tmp_path: Path) -> Path:
    rows = [
        {"task_id": 1, "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n  return a + b",
         "test_list": ["assert add(1, 2) == 3"]},
        {"task_id": 20, "text": "Write a python function to negate x.", "code": "def neg(x):\r\n  return -x",
         "test_list": ["assert neg(1) == -1"]},
    ]  # fmt: skip
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mbpp_summaries_split_by_task_id_and_fill_fields(tmp_path: Path) -> None:
    docs = mbpp_summaries(_mbpp_file(tmp_path), 11, 510)
    assert len(docs) == 1
    doc = docs[0]
    assert doc.references == ["negate x."]
    assert doc.fields == {"code": "def neg(x):\n  return -x", "name": "neg", "task_id": 20}
    assert doc.query == "Code:\ndef neg(x):\n  return -x\nDescription:"
    assert "negate" not in doc.query  # the target is not in the source


WIKI = """
 = Alpha Beta =

 Alpha Beta is a river in Nowhere . It flows north .

 = = History = =

 The river was named in 1900 . Settlers came later .
 = = = Late = = =
 Floods happened in 1950 .

 = Gamma =

 Gamma is short .

 = = Notes = =

 Too short .
"""


def test_wikitext_articles_split_lead_from_body_and_drop_headings() -> None:
    arts = wikitext_articles(WIKI)
    assert [a[0] for a in arts] == ["Alpha Beta", "Gamma"]
    title, lead, body = arts[0]
    assert lead == ["Alpha Beta is a river in Nowhere . It flows north ."]
    assert body == ["The river was named in 1900 . Settlers came later .", "Floods happened in 1950 ."]


def test_wikitext_leads_source_excludes_the_lead(tmp_path: Path) -> None:
    path = tmp_path / "wiki.txt"
    path.write_text(WIKI)
    docs = wikitext_leads(path, source_words=5, min_lead_words=5, min_body_words=5)
    assert len(docs) == 1  # Gamma's lead and body are under 5 words
    doc = docs[0]
    assert doc.references == ["Alpha Beta is a river in Nowhere . It flows north ."]
    assert doc.query == "Title: Alpha Beta\nArticle: The river was named in\nSummary:"
    assert doc.fields["body_sentences"] == [
        "The river was named in 1900 .",
        "Settlers came later .",
        "Floods happened in 1950 .",
    ]


def test_split_sentences_on_tokenised_text() -> None:
    assert split_sentences('He said " yes . " Then 3 ships came . ( Later ) x .') == [
        'He said " yes .',
        '" Then 3 ships came .',
        "( Later ) x .",
    ]
    assert split_sentences("No end") == ["No end"]


# ------------------------------------------------------------------------------------------ baselines


def test_identifier_words_and_code_tokens() -> None:
    assert identifier_words("maxSubArray_sum") == ["max", "sub", "array", "sum"]
    assert identifier_words("remove_Occ") == ["remove", "occ"]
    assert identifier_words("parseHTTPHeader2") == ["parse", "http", "header", "2"]
    assert code_tokens("def min_cost(a): return a+10") == [
        "def",
        "min_cost",
        "min",
        "cost",
        "a",
        "return",
        "a",
        "10",
    ]


def test_name_template_adds_the_usual_verb_only_when_the_name_has_none() -> None:
    starts = first_words(["find the max.", "find a path.", "remove spaces.", "Check it."])
    assert starts["find"] == 2 and starts["check"] == 1
    assert name_template("min_cost", starts) == "find min cost"
    assert name_template("remove_Occ", starts) == "remove occ"
    assert name_template("checkPrime", starts) == "check prime"


def test_nearest_descriptions_retrieves_the_closest_program() -> None:
    train_code = [
        "def sum_list(xs):\n    return sum(xs)",
        "def reverse_string(s):\n    return s[::-1]",
        "def is_prime(n):\n    return all(n % d for d in range(2, n))",
    ]
    train_text = ["sum a list", "reverse a string", "check primality"]
    queries = ["def rev_string(text):\n    return text[::-1]", "def prime_check(n):\n    return n > 1"]
    assert nearest_descriptions(train_code, train_text, queries) == ["reverse a string", "check primality"]


def test_lead_length_is_the_median_sentence_count() -> None:
    assert lead_length(["A . B .", "A . B . C . D .", "A ."]) == 2
    assert lead_length([""]) == 1
    assert lead_k(["a .", "b .", "c ."], 2) == "a . b ."


def test_textrank_picks_the_central_sentences_in_document_order() -> None:
    sentences = [
        "cats chase small mice at night .",  # shares words with the two below
        "dogs sleep all day .",  # shares nothing
        "small cats and mice play at night .",
        "mice fear cats at night .",
    ]
    # hand-computed edge weights |Si ∩ Sj| / (ln|Si| + ln|Sj|) (word sets of 6, 4, 7, 5; "." is no word):
    # 0-2: 5 / (ln 6 + ln 7) = 1.338, 0-3: 4 / (ln 6 + ln 5) = 1.176, 2-3: 4 / (ln 7 + ln 5) = 1.125;
    # sentence 1 has no edge. Weighted degrees 2.514 > 2.463 > 2.301 order the PageRank scores.
    assert textrank(sentences, 1) == sentences[0]
    assert textrank(sentences, 2) == f"{sentences[0]} {sentences[2]}"
    assert textrank(sentences, 3) == f"{sentences[0]} {sentences[2]} {sentences[3]}"  # document order
    assert textrank(sentences[:2], 3) == " ".join(sentences[:2])  # k ≥ n: everything, in order


def _code_task(docs: list[Doc], pool: list[Doc]) -> Task:
    return Task("toy", "generation", docs, pool, metrics=("rouge",))


def _code_doc(code: str, name: str, ref: str) -> Doc:
    return Doc(f"Code:\n{code}\nDescription:", references=[ref], fields={"code": code, "name": name})


def test_code_baselines_fit_on_the_pool_and_never_read_test_references() -> None:
    pool = [
        _code_doc("def reverse_words(s):\n    return ' '.join(s.split()[::-1])", "reverse_words", "reverse the words of a string."),
        _code_doc("def find_max(xs):\n    return max(xs)", "find_max", "find the largest element of a list."),
        _code_doc("def total(ys):\n    return sum(ys)", "total", "find the sum of a list."),
    ]  # fmt: skip
    docs = [
        _code_doc("def largest(xs):\n    return max(xs)", "largest", "find the largest element of a list.")
    ]
    task = _code_task(docs, pool)
    nn = evaluate_baseline(get_baseline("tfidf-nn"), task)
    assert nn["metrics"]["rouge1"] == pytest.approx(1.0)
    tmpl = evaluate_baseline(get_baseline("name-template"), task)
    # "find" opens 2 of the 3 training descriptions; "find largest" against "find the largest element of a list .": P = 1, R = 2/7
    assert tmpl["metrics"]["rouge1"] == pytest.approx(2 * (2 / 7) / (1 + 2 / 7))
    # the outputs do not change when the evaluated docs' references do
    docs[0].references = ["something else entirely"]
    for name in ("tfidf-nn", "name-template"):
        assert get_baseline(name).run(task) == get_baseline(name).run(_code_task(list(docs), pool))
    assert get_baseline("tfidf-nn").run(task) == ["find the largest element of a list."]


def test_baselines_apply_only_to_their_source() -> None:
    code = _code_task([_code_doc("def f(): pass", "f", "x")], [_code_doc("def g(): pass", "g", "y")])
    body = Doc("q", references=["lead"], fields={"title": "t", "body": "b .", "body_sentences": ["b ."]})
    article = _code_task([body], [body])
    for name in ("name-template", "tfidf-nn"):
        assert get_baseline(name).applies(code) and not get_baseline(name).applies(article)
    for name in ("lead-k", "textrank"):
        assert get_baseline(name).applies(article) and not get_baseline(name).applies(code)
    assert not get_baseline("tfidf-nn").applies(_code_task(code.docs, []))  # no training split


# --------------------------------------------------------------------------------- the real data sets


@needs_shared
def test_mbpp_summarize_uses_the_official_split_without_leakage() -> None:
    task = load_task("mbpp_summarize", data_dir=SHARED)
    assert (len(task.docs), len(task.fewshot_pool)) == (500, 374)
    test_ids = {d.fields["task_id"] for d in task.docs}
    train_ids = {d.fields["task_id"] for d in task.fewshot_pool}
    assert test_ids == set(range(11, 511)) and train_ids == set(range(601, 975))
    assert all(d.fields["name"] for d in task.docs + task.fewshot_pool)
    assert task.metrics == ("rouge",)


@needs_shared
def test_wikitext_lead_trains_on_valid_and_tests_on_test() -> None:
    task = load_task("wikitext_lead", data_dir=SHARED)
    assert len(task.docs) == 60 and len(task.fewshot_pool) == 60
    assert not {d.fields["title"] for d in task.docs} & {d.fields["title"] for d in task.fewshot_pool} - {
        "<unk>",
        "<unk> <unk>",
    }
    for doc in task.docs:
        assert doc.references[0][:200] not in doc.fields["body"]  # the lead is not in the source
    lead = evaluate_baseline(get_baseline("lead-k"), task)["metrics"]
    assert 0.2 < lead["rouge1"] < 0.8  # extractive sentences share many words with the lead, not all
