"""Tests for lmforge.data.clean: text normalisation, empty and exact-duplicate drops, counts."""

from __future__ import annotations

import random
import unicodedata

from lmforge.data.clean import Cleaner, ExactDedup, normalize, normalize_text
from lmforge.data.document import Document


def test_normalize_text_rules():
    assert normalize_text("a\r\nb\rc") == "a\nb\nc"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC
    assert normalize_text("a\x00b\x07c\td\x1b") == "ab" + "c\td"
    assert normalize_text("line  \t\nnext   ") == "line\nnext"
    assert normalize_text("a\n\n\n\n\n\nb") == "a\n\n\nb"  # five blank lines → two
    assert normalize_text("a\n\n\nb") == "a\n\n\nb"  # two blank lines stay
    assert normalize_text("a\n  \n \n\t\n\nb") == "a\n\n\nb"  # whitespace-only lines are blank
    assert normalize_text("  \n hello \n\n") == "hello"
    assert normalize_text("bad \ud800 surrogate") == "bad \ufffd surrogate"


def test_normalize_text_is_idempotent_and_clean_on_random_input():
    rng = random.Random(0)
    alphabet = "ab \t\n\r\x00\x0b\x85\u0301e\u00e9\u3000\u200b☕\U0001f600"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        once = normalize_text(text)
        assert normalize_text(once) == once
        assert "\r" not in once and "\n\n\n\n" not in once
        assert all(c in "\n\t" or unicodedata.category(c) != "Cc" for c in once)
        assert unicodedata.is_normalized("NFC", once)


def docs(*texts: str) -> list[Document]:
    return [Document(id=f"d{i}", text=t, metadata={"source": "test"}) for i, t in enumerate(texts)]


def test_cleaner_drops_empty_and_exact_duplicates_keeping_first():
    dropped = []
    cleaner = Cleaner(on_drop=lambda doc, reason: dropped.append((doc.id, reason)))
    kept = list(cleaner(docs("Hello  \r\n", "", "other", "Hello", " \n\t ", "other\n\n")))
    assert [(d.id, d.text) for d in kept] == [("d0", "Hello"), ("d2", "other")]
    assert kept[0].metadata == {"source": "test"}
    assert dropped == [("d1", "empty"), ("d3", "exact_duplicate"), ("d4", "empty"), ("d5", "exact_duplicate")]
    stats = cleaner.stats.to_dict()
    assert stats["docs_in"] == 6 and stats["docs_out"] == 2
    assert stats["bytes_in"] == len("Hello  \r\n") + len("other") + len("Hello") + len(" \n\t ") + len(
        "other\n\n"
    )
    assert stats["bytes_out"] == len("Hello") + len("other")
    assert stats["drops"] == {"empty": 2, "exact_duplicate": 2}
    assert stats["dropped_ids"]["exact_duplicate"] == ["d3", "d5"]


def test_dedup_state_spans_streams_and_steps_compose():
    cleaner = Cleaner(steps=[normalize, ExactDedup()])
    assert [d.id for d in cleaner(docs("x", "y"))] == ["d0", "d1"]
    assert list(cleaner(docs("x"))) == []  # seen in the first stream
    assert list(Cleaner(steps=[ExactDedup()])(docs("x ", "x"))) == docs("x ", "x")  # no normalise: differ
    assert cleaner.stats.docs_in == 3 and cleaner.stats.drops["exact_duplicate"] == 1
