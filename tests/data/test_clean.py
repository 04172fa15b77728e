"""Tests for lmforge.data.clean (the step chain and its counts) and normalize_text's rules."""

from __future__ import annotations

import random
import unicodedata

from lmforge.data.clean import Cleaner, drop_empty
from lmforge.data.document import Document
from lmforge.data.normalize import normalize_text


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


def seen_before(docs, drop):
    """A step that drops a text seen earlier in the stream (reason ``exact_duplicate``)."""
    seen = set()
    for doc in docs:
        if doc.text.strip() in seen:
            drop(doc, "exact_duplicate")
        else:
            seen.add(doc.text.strip())
            yield doc


def test_cleaner_chains_steps_counts_and_reports_drops():
    dropped = []
    cleaner = Cleaner([drop_empty, seen_before], on_drop=lambda doc, reason: dropped.append((doc.id, reason)))
    kept = list(cleaner(docs("Hello  \r\n", "", "other", "Hello", " \n\t ", "other\n\n")))
    assert [d.id for d in kept] == ["d0", "d2"] and kept[0].metadata == {"source": "test"}
    assert dropped == [("d1", "empty"), ("d3", "exact_duplicate"), ("d4", "empty"), ("d5", "exact_duplicate")]
    stats = cleaner.stats.to_dict()
    assert stats["docs_in"] == 6 and stats["docs_out"] == 2
    assert stats["bytes_in"] == len("Hello  \r\n") + len("other") + len("Hello") + len(" \n\t ") + len(
        "other\n\n"
    )
    assert stats["bytes_out"] == len("Hello  \r\n") + len("other")
    assert stats["drops"] == {"empty": 2, "exact_duplicate": 2}
    assert stats["dropped_ids"]["exact_duplicate"] == ["d3", "d5"]
    assert [s["step"] for s in stats["steps"]] == ["drop_empty", "seen_before"]
    assert [(s["docs_in"], s["docs_out"]) for s in stats["steps"]] == [(6, 4), (4, 2)]
