"""Heuristic quality filter: drop documents that look like garbage rather than written text.

Each rule is one threshold in ``QualityConfig`` and one drop reason; a document is dropped for the
first rule it fails (rules run cheapest first). Sources:

- Gopher (Rae et al. 2021, appendix A, "quality filtering"): word count 50..100,000; mean word
  length 3..10; '#' and ellipsis to word ratios <= 0.1; <= 90% of lines starting with a bullet;
  <= 30% of lines ending in an ellipsis; >= 80% of words holding a letter; at least two of the stop
  words *the, be, to, of, and, that, have, with*; repetition: <= 30% duplicate lines, <= 20% of
  characters in duplicate lines, most common 2/3/4-gram covering <= 20/18/16% of characters.
- C4 (Raffel et al. 2020, section 2.2): boilerplate lines ("javascript", "lorem ipsum", "terms of
  use", "privacy policy", cookie notices) and the curly-bracket rule; lines ending in terminal
  punctuation.
- FineWeb (Penedo et al. 2024, its custom heuristic filters): C4's line-level punctuation rule
  turned into a document-level one (drop when fewer than 12% of lines end in punctuation).

Departures, each made for technical English such as ``builtin:python-docs`` (short docstrings full
of code), each measured there (``docs/data-quality.md``; the strict Gopher settings keep 65%):

- ``min_words`` is 5, not 50 (50 alone drops 31% of python-docs); the stop-word rule applies only
  to documents of at least ``stop_words_min_doc_words`` (50) words, since a one-line docstring
  rarely holds two of the eight; stop words are counted as occurrences, as datatrove's Gopher filter
  does; ``min_alpha_words`` is 0.7, not 0.8 (grammar rules, tables and doctests);
- the top n-gram rule ignores n-grams seen fewer than ``top_ngram_min_count`` (3) times (a short
  docstring repeating "Return True if" twice is not spam); character fractions are over
  ``len(text)``, as in datatrove;
- words are ``\\w+`` runs (an identifier is one word);
- boilerplate drops a document only when more than ``max_boilerplate_lines`` of its lines are
  boilerplate (C4 deletes the lines; we never edit text here), and matches C4's cookie *phrases*
  ("use cookies", "cookie policy"), not the bare word, which the ``http.cookies`` docs are full of;
- the curly-bracket rule is off by default (it drops every document with a dict or JSON sample).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lmforge.config import at_least, opt
from lmforge.data.clean import DropFn
from lmforge.data.document import Document
from lmforge.errors import ConfigError

__all__ = [
    "BOILERPLATE_PHRASES",
    "GOPHER_STOP_WORDS",
    "REASONS",
    "QualityConfig",
    "QualityFilter",
    "build",
    "failures",
]

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BOILERPLATE_PHRASES = (
    "javascript",
    "lorem ipsum",
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
BULLETS = ("•", "-", "*", "‣", "◦", "▪", "●", "–", "—")
# drop reasons, in the order rules are checked
REASONS = (
    "too_few_words",
    "too_many_words",
    "mean_word_length",
    "symbol_ratio",
    "alpha_words",
    "stop_words",
    "bullet_lines",
    "ellipsis_lines",
    "line_punct",
    "boilerplate",
    "curly_bracket",
    "dup_lines",
    "top_ngram",
)

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_ALPHA = re.compile(r"[^\W\d_]")
_BOILERPLATE = re.compile("|".join(re.escape(p) for p in BOILERPLATE_PHRASES))
_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "…", ":", ")")


@dataclass
class QualityConfig:
    """Thresholds of the quality rules; a threshold of 0 disables its rule (noted per field)."""

    enabled: bool = opt(True, "run the quality filter")
    min_words: int = opt(5, "drop documents with fewer words (too_few_words); 0 = off")
    max_words: int = opt(100_000, "drop documents with more words (too_many_words); 0 = off")
    min_mean_word_length: float = opt(3.0, "drop if mean word length is below (mean_word_length); 0 = off")
    max_mean_word_length: float = opt(10.0, "drop if mean word length is above (mean_word_length); 0 = off")
    max_symbol_ratio: float = opt(0.1, "max '#' per word and max '...' per word (symbol_ratio); 0 = off")
    min_alpha_words: float = opt(0.7, "min fraction of words holding a letter (alpha_words); 0 = off")
    min_stop_words: int = opt(2, "min occurrences of Gopher stop words (stop_words); 0 = off")
    stop_words_min_doc_words: int = opt(
        50, "apply the stop_words rule only to documents with this many words (Gopher's minimum)"
    )
    max_bullet_lines: float = opt(0.9, "max fraction of lines starting with a bullet (bullet_lines); 0 = off")
    max_ellipsis_lines: float = opt(0.3, "max fraction of lines ending in '...' (ellipsis_lines); 0 = off")
    min_line_punct: float = opt(
        0.12, "min fraction of lines ending in terminal punctuation (line_punct); 0 = off"
    )
    line_punct_min_lines: int = opt(5, "apply the line_punct rule only to documents with this many lines")
    max_boilerplate_lines: float = opt(
        0.2, "max fraction of lines holding C4 boilerplate phrases (boilerplate); 0 = off"
    )
    drop_curly_bracket: bool = opt(False, "C4: drop any document containing '{' (curly_bracket)")
    max_dup_lines: float = opt(0.3, "max fraction of lines that repeat an earlier line (dup_lines); 0 = off")
    max_dup_line_chars: float = opt(0.2, "max fraction of characters in repeated lines (dup_lines); 0 = off")
    top_ngram_min_count: int = opt(3, "top_ngram applies only when the top n-gram occurs this often")
    max_top_ngram: list[float] = opt(
        [0.20, 0.18, 0.16],
        "max fraction of the text in the most common 2-, 3-, 4-gram (top_ngram); 0 = off",
    )

    def validate(self) -> None:
        at_least(
            self,
            0,
            "min_words",
            "max_words",
            "min_stop_words",
            "stop_words_min_doc_words",
            "line_punct_min_lines",
            "top_ngram_min_count",
        )
        if self.max_words and self.min_words > self.max_words:
            raise ConfigError("max_words", f"must be >= min_words ({self.min_words}), got {self.max_words}")
        if self.min_mean_word_length < 0 or self.max_mean_word_length < 0:
            raise ConfigError("min_mean_word_length", "word-length bounds must be >= 0")
        if self.max_mean_word_length and self.min_mean_word_length > self.max_mean_word_length:
            raise ConfigError(
                "max_mean_word_length",
                f"must be >= min_mean_word_length ({self.min_mean_word_length}), got {self.max_mean_word_length}",
            )
        at_least(self, 0, "max_symbol_ratio")
        for name in (
            "min_alpha_words",
            "max_bullet_lines",
            "max_ellipsis_lines",
            "min_line_punct",
            "max_boilerplate_lines",
            "max_dup_lines",
            "max_dup_line_chars",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(name, f"must be a fraction in [0, 1] (0 = off), got {value}")
        if len(self.max_top_ngram) != 3 or not all(0 <= v <= 1 for v in self.max_top_ngram):
            raise ConfigError(
                "max_top_ngram",
                f"must be three fractions in [0, 1] (2-, 3-, 4-gram), got {self.max_top_ngram}",
            )


class _Measures:
    """What the rules look at, computed once per document and only when first asked for."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._words: list[str] | None = None
        self._lines: list[str] | None = None

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = _WORD.findall(self.text)
        return self._words

    @property
    def lines(self) -> list[str]:
        """Non-blank lines, stripped."""
        if self._lines is None:
            self._lines = [s for s in (line.strip() for line in self.text.split("\n")) if s]
        return self._lines


def _top_ngram_fraction(words: list[str], n: int, n_chars: int, min_count: int) -> float:
    """Characters in every occurrence of the most common word n-gram, over ``n_chars``.

    An n-gram counts as its words joined by single spaces (as datatrove's Gopher filter counts it).
    0 when the most common n-gram occurs fewer than ``min_count`` times.
    """
    if len(words) < n or not n_chars:
        return 0.0
    grams = Counter(zip(*(words[i:] for i in range(n))))
    gram, count = grams.most_common(1)[0]
    if count < min_count:
        return 0.0
    return (sum(len(w) for w in gram) + n - 1) * count / n_chars


def _duplicate_lines(lines: list[str], n_chars: int) -> tuple[float, float]:
    """(fraction of lines that repeat an earlier line, their characters over ``n_chars``)."""
    seen: set[str] = set()
    dup_lines = dup_chars = 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        else:
            seen.add(line)
    return dup_lines / len(lines), (dup_chars / n_chars if n_chars else 0.0)


def _check(m: _Measures, cfg: QualityConfig, first_only: bool) -> list[str]:
    """Reasons ``m`` fails, in ``REASONS`` order; stops at the first when ``first_only``."""
    failed: list[str] = []

    def fail(reason: str) -> bool:
        failed.append(reason)
        return first_only

    words = m.words
    n_words = len(words)
    if cfg.min_words and n_words < cfg.min_words and fail("too_few_words"):
        return failed
    if cfg.max_words and n_words > cfg.max_words and fail("too_many_words"):
        return failed
    if n_words:
        mean_len = sum(len(w) for w in words) / n_words
        too_short = cfg.min_mean_word_length and mean_len < cfg.min_mean_word_length
        too_long = cfg.max_mean_word_length and mean_len > cfg.max_mean_word_length
        if (too_short or too_long) and fail("mean_word_length"):
            return failed
    text = m.text
    if cfg.max_symbol_ratio:
        ratio = max(text.count("#"), text.count("...") + text.count("…")) / max(n_words, 1)
        if ratio > cfg.max_symbol_ratio and fail("symbol_ratio"):
            return failed
    if cfg.min_alpha_words:
        tokens = text.split()
        alpha = sum(1 for t in tokens if _ALPHA.search(t))
        if tokens and alpha / len(tokens) < cfg.min_alpha_words and fail("alpha_words"):
            return failed
    if cfg.min_stop_words and n_words >= cfg.stop_words_min_doc_words:
        present = sum(1 for w in words if w.lower() in GOPHER_STOP_WORDS)
        if present < cfg.min_stop_words and fail("stop_words"):
            return failed
    lines = m.lines
    if lines:
        n_lines = len(lines)
        if cfg.max_bullet_lines:
            bullets = sum(1 for s in lines if s.startswith(BULLETS))
            if bullets / n_lines > cfg.max_bullet_lines and fail("bullet_lines"):
                return failed
        if cfg.max_ellipsis_lines:
            ellipses = sum(1 for s in lines if s.endswith(("...", "…")))
            if ellipses / n_lines > cfg.max_ellipsis_lines and fail("ellipsis_lines"):
                return failed
        if cfg.min_line_punct and n_lines >= cfg.line_punct_min_lines:
            ended = sum(1 for s in lines if s.endswith(_TERMINAL))
            if ended / n_lines < cfg.min_line_punct and fail("line_punct"):
                return failed
        if cfg.max_boilerplate_lines:
            boiler = sum(1 for s in lines if _BOILERPLATE.search(s.lower()))
            if boiler / n_lines > cfg.max_boilerplate_lines and fail("boilerplate"):
                return failed
    if cfg.drop_curly_bracket and "{" in text and fail("curly_bracket"):
        return failed
    if lines and (cfg.max_dup_lines or cfg.max_dup_line_chars):
        frac_lines, frac_chars = _duplicate_lines(lines, len(text))
        over_lines = cfg.max_dup_lines and frac_lines > cfg.max_dup_lines
        over_chars = cfg.max_dup_line_chars and frac_chars > cfg.max_dup_line_chars
        if (over_lines or over_chars) and fail("dup_lines"):
            return failed
    if any(cfg.max_top_ngram):
        lowered = [w.lower() for w in words]
        for n, limit in zip((2, 3, 4), cfg.max_top_ngram):
            if limit and _top_ngram_fraction(lowered, n, len(text), cfg.top_ngram_min_count) > limit:
                fail("top_ngram")
                break
    return failed


def failures(text: str, cfg: QualityConfig | None = None, *, first_only: bool = False) -> list[str]:
    """Every rule ``text`` fails under ``cfg`` (default thresholds), as drop reasons in check order.

    With ``first_only`` stop at the first failure (what the filter drops for). ``[]`` means kept.
    """
    return _check(_Measures(text), cfg or QualityConfig(), first_only)


class QualityFilter:
    """Step: drop documents failing a quality rule, with the rule's reason (see ``REASONS``).

    ``counts()``: ``quality_checked`` (documents seen), ``quality_kept``.
    """

    name = "quality"  # shown in per-step statistics

    def __init__(self, cfg: QualityConfig | None = None) -> None:
        self.cfg = cfg or QualityConfig()
        self.checked = 0
        self.kept = 0

    def __call__(self, docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
        for doc in docs:
            self.checked += 1
            failed = _check(_Measures(doc.text), self.cfg, first_only=True)
            if failed:
                drop(doc, failed[0])
            else:
                self.kept += 1
                yield doc

    def counts(self) -> dict[str, int]:
        """What this instance measured (summable across worker processes)."""
        return {"quality_checked": self.checked, "quality_kept": self.kept}


def build(cfg: QualityConfig) -> QualityFilter | None:
    """The quality step for ``cfg``, or None when ``cfg.enabled`` is false."""
    return QualityFilter(cfg) if cfg.enabled else None
