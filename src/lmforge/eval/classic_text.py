"""Classic text preprocessing for the bag-of-words baselines: word tokens, stop-word removal, lemmas.

The pipeline LLMs made unnecessary, kept as the baseline's option so a run can show what it is worth:

- ``words``: lower-cased runs of letters, digits and apostrophes (``don't`` stays one word).
- stop words: scikit-learn's ``ENGLISH_STOP_WORDS`` (318 words, from the Glasgow Information Retrieval
  Group's list), which ships with scikit-learn and needs no download.
- lemmas: ``simplemma`` (Barbaresi 2021), a dictionary lemmatiser whose English data ships inside the
  wheel, so it works offline (NLTK's WordNet needs ``nltk.download`` and is not used). Dictionary
  look-up without part-of-speech: ``was`` → ``be``, ``mice`` → ``mouse``, ``running`` → ``run``.

``simplemma`` is in the optional ``classic`` extra; asking for lemmas without it raises ``ImportError``
naming the extra.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_WORD = re.compile(r"[\w']+", re.UNICODE)
PREPROCESS = ("none", "stopwords", "lemmas", "stopwords+lemmas")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``."""
    return [w.strip("'") for w in _WORD.findall(text.lower()) if w.strip("'")]


def _lemmatizer(lang: str) -> Callable[[str], str]:
    try:
        import simplemma
    except ImportError as e:
        raise ImportError("lemmas need simplemma: pip install 'lmforge[classic]'") from e
    return lambda w: simplemma.lemmatize(w, lang=lang)


def classic_tokens(text: str, *, stopwords: bool = True, lemmas: bool = True, lang: str = "en") -> list[str]:
    """``words(text)`` without English stop words (``stopwords``) and mapped to lemmas (``lemmas``).

    Stop words are removed before lemmatising, so an inflected stop word ("was") is dropped as such.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    out = words(text)
    if stopwords:
        out = [w for w in out if w not in ENGLISH_STOP_WORDS]
    if lemmas:
        lemma = _lemmatizer(lang)
        out = [lemma(w) for w in out]
    return out


def preprocessor(mode: str) -> Callable[[str], str] | None:
    """A text → text function for ``mode`` in ``PREPROCESS`` (``None`` for ``"none"``): the kept tokens
    joined by spaces, ready for a ``CountVectorizer``."""
    if mode not in PREPROCESS:
        raise ValueError(f"preprocess: expected one of {', '.join(PREPROCESS)}, got {mode!r}")
    if mode == "none":
        return None
    stop, lem = "stopwords" in mode, "lemmas" in mode
    if lem:
        _lemmatizer("en")  # fail now, not on the first text
    return lambda text: " ".join(classic_tokens(text, stopwords=stop, lemmas=lem))


def preprocess_all(texts: Sequence[str], mode: str) -> list[str]:
    """``texts`` through ``preprocessor(mode)`` (unchanged for ``"none"``)."""
    fn = preprocessor(mode)
    return list(texts) if fn is None else [fn(t) for t in texts]
