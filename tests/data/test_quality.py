"""Tests for lmforge.data.quality: each rule catches its kind of garbage, good text passes,
rules switch off, the config refuses impossible values, and python-docs keeps >= 90%."""

from __future__ import annotations

import pickle
import random
import string

import pytest

from lmforge.data.document import Document
from lmforge.data.quality import REASONS, QualityConfig, QualityFilter, build, failures
from lmforge.data.sources import iter_documents, resolve_sources
from lmforge.errors import ConfigError

PROSE = (
    "The committee met on Tuesday to review the proposal. After a long discussion, the members "
    "agreed that the plan should be tested with a small group of volunteers before it is offered "
    "to everyone. The chair thanked the authors for their careful work and asked them to report "
    "back with the results of the trial. A second meeting will be held in the spring, when the "
    "first data are expected to be available to the whole group and to the public."
)
DOCSTRING = (
    "Return a new dictionary initialized from an optional positional argument and a possibly "
    "empty set of keyword arguments.\n\n"
    "If no positional argument is given, an empty dictionary is created. If a positional argument "
    "is given and it is a mapping object, a dictionary is created with the same key-value pairs "
    "as the mapping object. Otherwise, the positional argument must be an iterable object.\n\n"
    "    >>> d = dict(one=1, two=2)\n"
    "    >>> d['one']\n"
    "    1\n"
)


def _random_symbols(rng: random.Random) -> str:
    return " ".join("".join(rng.choice("#$%&*+=<>|~^") for _ in range(rng.randint(1, 6))) for _ in range(120))


GARBAGE = {
    "too_few_words": "Click here.",
    "too_many_words": None,  # checked with a small max_words below
    "mean_word_length": " ".join(["a", "b", "c", "d", "of", "to", "the", "and"] * 20),
    "symbol_ratio": " ".join(f"#tag{i} #news #viral #follow" for i in range(40)),
    "alpha_words": None,  # random symbols, below
    "stop_words": " ".join(
        random.Random(3).choice(["quantum", "synergy", "blockchain", "platform", "solution", "growth"])
        for _ in range(80)
    ),
    "bullet_lines": "\n".join(f"• item number {i} with the best price and free delivery" for i in range(30)),
    "ellipsis_lines": "\n".join(
        f"Read more about the story of the day number {i} and the rest..." for i in range(20)
    ),
    "line_punct": "\n".join(
        f"Home Products Services About Contact Blog Shop Page {i} of the menu" for i in range(12)
    ),
    "boilerplate": (
        "This website uses cookies to improve your experience.\n"
        "By continuing you agree to our Privacy Policy and Terms of Use.\n"
        "Please enable JavaScript to view the comments.\n"
        "Read our cookie policy to learn more.\n"
        "The weather was nice and the children played in the park with their dog for the whole day."
    ),
    "dup_lines": "\n".join(["Buy now and save with the best deals of the year!"] * 15 + [PROSE]),
    "top_ngram": " ".join(["cheap pills online"] * 40) + " " + PROSE,
}


def test_each_rule_catches_its_garbage():
    rng = random.Random(0)
    cases = {k: v for k, v in GARBAGE.items() if v is not None}
    numbers = " ".join(f"{rng.randint(10**5, 10**6)} = {rng.randint(10**5, 10**6)}" for _ in range(60))
    cases["alpha_words"] = "The table of values to be read with care: " + numbers
    for reason, text in cases.items():
        assert failures(text, first_only=True) == [reason], (reason, failures(text))
    cfg = QualityConfig(max_words=50)
    assert failures(PROSE, cfg, first_only=True) == ["too_many_words"]
    assert failures(_random_symbols(rng), first_only=True)  # caught (by the first of several rules)
    spam = "\n".join("".join(rng.choice(string.ascii_lowercase) for _ in range(30)) for _ in range(40))
    assert failures(spam, first_only=True) == ["mean_word_length"]
    assert failures("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * 3 + PROSE)


def test_good_text_passes():
    assert failures(PROSE) == []
    assert failures(DOCSTRING) == []
    assert failures("Return the number of items in the container.") == []  # short docstrings pass


def test_rules_switch_off_and_first_only():
    text = GARBAGE["dup_lines"]
    assert failures(text, QualityConfig(max_dup_lines=0, max_dup_line_chars=0, max_top_ngram=[0, 0, 0])) == []
    text = GARBAGE["symbol_ratio"]
    assert "symbol_ratio" not in failures(text, QualityConfig(max_symbol_ratio=0))
    assert failures(GARBAGE["too_few_words"], QualityConfig(min_words=0, min_stop_words=0)) == []
    assert failures(GARBAGE["boilerplate"], QualityConfig(max_boilerplate_lines=0)) == []
    curly = PROSE + " The mapping {'a': 1} is a dict."
    assert failures(curly) == [] and failures(curly, QualityConfig(drop_curly_bracket=True)) == [
        "curly_bracket"
    ]
    assert failures("Lorem ipsum", first_only=True) == ["too_few_words"]
    assert set(failures(GARBAGE["mean_word_length"])) <= set(REASONS)


def test_step_drops_with_reason_counts_and_pickles():
    docs = [
        Document("good", PROSE, {}),
        Document("dup", GARBAGE["dup_lines"], {}),
        Document("short", "Hi.", {}),
    ]
    dropped = []
    step = pickle.loads(pickle.dumps(build(QualityConfig())))
    kept = list(step(docs, lambda d, r: dropped.append((d.id, r))))
    assert [d.id for d in kept] == ["good"] and kept[0] is docs[0]
    assert dropped == [("dup", "dup_lines"), ("short", "too_few_words")]
    assert step.counts() == {"quality_checked": 3, "quality_kept": 1}
    assert build(QualityConfig(enabled=False)) is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_words", -1),
        ("max_words", 3),  # below min_words
        ("max_dup_lines", 1.5),
        ("min_line_punct", -0.1),
        ("max_top_ngram", [0.2, 0.18]),
        ("max_mean_word_length", 2.0),  # below min_mean_word_length
    ],
)
def test_config_rejects_impossible_values(field, value):
    with pytest.raises(ConfigError) as exc:
        QualityConfig(**{field: value}).validate()
    assert exc.value.key == field


def test_defaults_keep_most_of_python_docs():
    docs = [d for s in resolve_sources(["builtin:python-docs"]) for d in iter_documents(s)]
    step = QualityFilter(QualityConfig())
    drops: dict[str, int] = {}
    kept = list(step(docs, lambda d, r: drops.__setitem__(r, drops.get(r, 0) + 1)))
    assert len(kept) / len(docs) >= 0.90, drops
