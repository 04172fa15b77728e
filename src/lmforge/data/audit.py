"""Audit a corpus: count how often groups of people are mentioned, and find blocklisted words.

The group counts are a *representation* measure, not a judgement of any text: for each group (a
short list of words naming or referring to it) the audit counts the documents mentioning it and the
total mentions, so a report can show, say, that female terms appear in 30% of documents and male
terms in 55% (the kind of count behind the representational-bias analyses of Gopher, Rae et al.
2021, and PaLM, Chowdhery et al. 2022). The default lists are deliberately small and English-only; pass
your own ``groups`` for a real study. Words are matched out of context, so some counts are noisy:
"child" also counts child processes in technical text (ambiguous words such as "ms" and "old" are
left out of the defaults for that reason).

A blocklist (words or phrases, from the config or a file with one entry per line, ``#`` comments)
is counted, and documents with at least ``max_blocklist_hits`` hits are dropped when
``drop_blocklisted`` is on (reason ``blocklist``). The blocklist is empty by default.

Matching is on lower-cased word tokens (``\\b``-delimited, apostrophes kept inside words): single
words through one dict lookup per token, multi-word phrases through one compiled alternation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import at_least, opt
from lmforge.data.clean import DropFn
from lmforge.data.document import Document
from lmforge.errors import ConfigError, InputError

__all__ = ["DEFAULT_GROUPS", "AuditConfig", "Audit", "build", "load_blocklist"]

DEFAULT_GROUPS: dict[str, list[str]] = {
    "gender_female": [
        "she", "her", "hers", "herself", "woman", "women", "girl", "girls", "female", "females",
        "mother", "mothers", "daughter", "daughters", "sister", "sisters", "wife", "wives", "lady",
        "ladies", "mrs", "queen", "aunt", "grandmother",
    ],
    "gender_male": [
        "he", "him", "his", "himself", "man", "men", "boy", "boys", "male", "males", "father",
        "fathers", "son", "sons", "brother", "brothers", "husband", "husbands", "gentleman",
        "gentlemen", "mr", "king", "uncle", "grandfather",
    ],
    "religion": [
        "christian", "christians", "christianity", "muslim", "muslims", "islam", "islamic", "jewish",
        "jew", "jews", "judaism", "hindu", "hindus", "hinduism", "buddhist", "buddhists", "buddhism",
        "sikh", "sikhs", "atheist", "atheists", "catholic", "protestant",
    ],
    "nationality": [
        "american", "british", "chinese", "indian", "german", "french", "japanese", "russian",
        "mexican", "nigerian", "brazilian", "african", "european", "asian", "arab", "italian",
        "spanish", "korean", "canadian", "australian",
    ],
    "age": [
        "child", "children", "kid", "kids", "baby", "babies", "teenager", "teenagers", "teen",
        "teens", "youth", "adult", "adults", "elderly", "senior", "seniors",
        "retiree", "retirees",
    ],
}  # fmt: skip

_TOKEN = re.compile(r"\w+(?:['’]\w+)*")


def _norm_term(term: str) -> str:
    return " ".join(_TOKEN.findall(term.lower()))


def load_blocklist(path: str | Path) -> list[str]:
    """Entries of a blocklist file: one word or phrase per line; blank lines and ``#`` comments skipped.

    Raises:
        InputError: the file does not exist or cannot be read.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{p}: cannot read blocklist file ({exc.strerror or exc})") from None
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


@dataclass
class AuditConfig:
    """Options of the audit step."""

    enabled: bool = opt(True, "count group mentions and blocklist hits")
    groups: dict[str, list[str]] = opt(
        DEFAULT_GROUPS, "group name → words/phrases referring to it (a representation count only)"
    )
    blocklist: list[str] = opt([], "words or phrases to count (and optionally drop on)")
    blocklist_file: str = opt("", "file with one blocklist word or phrase per line (# comments)", path=True)
    drop_blocklisted: bool = opt(False, "drop documents with at least max_blocklist_hits blocklist hits")
    max_blocklist_hits: int = opt(1, "blocklist hits at which a document is dropped (when dropping)")

    def validate(self) -> None:
        for name, terms in self.groups.items():
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise ConfigError("groups", f"group name {name!r} must be lower-case letters, digits, _")
            if not any(_norm_term(t) for t in terms):
                raise ConfigError("groups", f"group {name!r} has no words")
        at_least(self, 1, "max_blocklist_hits")
        if self.blocklist_file and not Path(self.blocklist_file).is_file():
            raise ConfigError("blocklist_file", f"no such file: {self.blocklist_file}")


class _Matcher:
    """Counts occurrences of a term list in token lists: a dict for words, a regex for phrases."""

    def __init__(self, terms: Iterable[str]) -> None:
        normed = {_norm_term(t) for t in terms} - {""}
        self.words = frozenset(t for t in normed if " " not in t)
        phrases = sorted((t for t in normed if " " in t), key=len, reverse=True)
        self.phrases = (
            re.compile(r"\b(?:" + "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in phrases) + r")\b")
            if phrases
            else None
        )

    def count(self, tokens: Counter, lowered: str) -> int:
        """Occurrences in a document given its token counts and its lower-cased text."""
        if len(self.words) < len(tokens):
            n = sum(tokens[w] for w in self.words)
        else:
            n = sum(c for t, c in tokens.items() if t in self.words)
        if self.phrases is not None:
            n += sum(1 for _ in self.phrases.finditer(lowered))
        return n


class Audit:
    """Step: count group mentions and blocklist hits; drop blocklisted documents if configured.

    ``counts()``: ``audit_docs`` (documents seen), ``audit_<group>_docs`` and ``audit_<group>_terms``
    per group, ``blocklist_docs`` (documents with >= 1 hit) and ``blocklist_terms`` (hits).
    The blocklist file is read here, once, so worker processes receive the terms, not the path.
    """

    name = "audit"  # shown in per-step statistics

    def __init__(self, cfg: AuditConfig | None = None) -> None:
        self.cfg = cfg or AuditConfig()
        terms = list(self.cfg.blocklist)
        if self.cfg.blocklist_file:
            terms += load_blocklist(self.cfg.blocklist_file)
        self.groups = {name: _Matcher(words) for name, words in self.cfg.groups.items()}
        self.blocklist = _Matcher(terms) if terms else None
        self.tally: Counter = Counter()

    def __call__(self, docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
        for doc in docs:
            lowered = doc.text.lower()
            tokens = Counter(_TOKEN.findall(lowered))
            self.tally["audit_docs"] += 1
            for name, matcher in self.groups.items():
                n = matcher.count(tokens, lowered)
                if n:
                    self.tally[f"audit_{name}_docs"] += 1
                    self.tally[f"audit_{name}_terms"] += n
            hits = self.blocklist.count(tokens, lowered) if self.blocklist else 0
            if hits:
                self.tally["blocklist_docs"] += 1
                self.tally["blocklist_terms"] += hits
            if self.cfg.drop_blocklisted and hits >= self.cfg.max_blocklist_hits:
                drop(doc, "blocklist")
            else:
                yield doc

    def counts(self) -> dict[str, int]:
        """What this instance measured (summable across worker processes); every key always present."""
        out = {"audit_docs": self.tally["audit_docs"]}
        for name in self.groups:
            out[f"audit_{name}_docs"] = self.tally[f"audit_{name}_docs"]
            out[f"audit_{name}_terms"] = self.tally[f"audit_{name}_terms"]
        out["blocklist_docs"] = self.tally["blocklist_docs"]
        out["blocklist_terms"] = self.tally["blocklist_terms"]
        return out


def build(cfg: AuditConfig) -> Audit | None:
    """The audit step for ``cfg``, or None when ``cfg.enabled`` is false.

    Raises:
        InputError: ``cfg.blocklist_file`` cannot be read.
    """
    return Audit(cfg) if cfg.enabled else None
