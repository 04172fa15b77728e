"""Language identification: tag each document with its language, keep only the wanted ones.

Uses py3langid (a maintained fork of langid.py: Lui & Baldwin 2012, a naive Bayes classifier over
byte n-grams, 97 languages; the model ships inside the package, so no download). Probabilities are
normalised (``norm_probs=True``), so ``lang_score`` is in [0, 1]. Only the first ``max_chars``
characters are classified: the cost stays bounded and the opening of a document is representative
enough. FineWeb (Penedo et al. 2024) keeps English documents scoring >= 0.65 with fastText; this
step defaults to keeping English at any score, since short technical docstrings score low.

The model (about 70 MB in memory) is loaded once per process on first use and never pickled, so
the step is cheap to construct and to send to worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from lmforge.config import at_least, opt
from lmforge.data.clean import DropFn
from lmforge.data.document import Document
from lmforge.errors import ConfigError

__all__ = ["LangConfig", "LanguageFilter", "build", "identify", "language_codes"]

log = logging.getLogger(__name__)

_IDENTIFIER: Any = None  # one per process, loaded on first use


@dataclass
class LangConfig:
    """Options of the language step."""

    enabled: bool = opt(True, "identify document languages")
    keep: list[str] = opt(["en"], "ISO 639-1 codes to keep (e.g. [en, fr]); empty = keep all, only count")
    min_confidence: float = opt(0.0, "drop kept-language documents scoring below this (0..1)")
    max_chars: int = opt(2000, "classify only the first this many characters")

    def validate(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError("min_confidence", f"must be in [0, 1], got {self.min_confidence}")
        at_least(self, 1, "max_chars")
        # only the form here: checking against the model's list loads a 70 MB model, which would slow
        # every config validation (even a fully cached `lmforge run`); build() checks the codes
        bad = [c for c in self.keep if not re.fullmatch(r"[a-z]{2,3}", c)]
        if bad:
            raise ConfigError("keep", f"language codes are 2-3 lower-case letters (ISO 639), got {bad}")


def check_codes(codes: list[str]) -> None:
    """Raise ConfigError naming every code the language model does not know (loads the model)."""
    known = set(language_codes())
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise ConfigError("keep", f"unknown language codes {unknown}; valid: {', '.join(sorted(known))}")


def _identifier() -> Any:
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        log.debug("loading the py3langid model")
        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def language_codes() -> list[str]:
    """The language codes the model can return."""
    return list(_identifier().labels)


def identify(text: str, max_chars: int = 2000) -> tuple[str, float]:
    """``(ISO 639-1 code, probability)`` of the most likely language of ``text[:max_chars]``."""
    lang, score = _identifier().classify(text[:max_chars])
    return str(lang), float(score)


class LanguageFilter:
    """Step: set ``metadata["lang"]`` and ``metadata["lang_score"]``; drop unwanted languages.

    A document is dropped (reason ``language``) when ``cfg.keep`` is non-empty and its language is
    not in it, or scores below ``cfg.min_confidence``. ``counts()``: ``lang_<code>`` per language
    seen (before dropping).
    """

    name = "langid"  # shown in per-step statistics

    def __init__(self, cfg: LangConfig | None = None) -> None:
        self.cfg = cfg or LangConfig()
        self.langs: Counter = Counter()

    def __call__(self, docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
        keep = set(self.cfg.keep)
        for doc in docs:
            lang, score = identify(doc.text, self.cfg.max_chars)
            self.langs[lang] += 1
            meta = {**doc.metadata, "lang": lang, "lang_score": round(score, 4)}
            doc = dataclasses.replace(doc, metadata=meta)
            if keep and (lang not in keep or score < self.cfg.min_confidence):
                drop(doc, "language")
            else:
                yield doc

    def counts(self) -> dict[str, int]:
        """What this instance measured (summable across worker processes)."""
        return {f"lang_{k}": v for k, v in sorted(self.langs.items())}


def build(cfg: LangConfig) -> LanguageFilter | None:
    """The language step for ``cfg``, or None when ``cfg.enabled`` is false.

    Raises:
        ConfigError: a ``keep`` code the model does not know.
    """
    if not cfg.enabled:
        return None
    check_codes(cfg.keep)
    return LanguageFilter(cfg)
