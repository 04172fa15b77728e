"""Okapi BM25 (Robertson & Zaragoza 2009), the classic retrieval baseline beside trained embeddings.

A document ``d`` scores for a query ``q``

    score(q, d) = Σ_{t ∈ q} idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))

with ``tf(t, d)`` the count of term ``t`` in ``d``, ``|d|`` its length in terms, ``avgdl`` the mean length
over the collection and ``k1 = 1.5``, ``b = 0.75`` (within the ranges Robertson & Zaragoza give;
``rank_bm25``'s defaults). A query term counts as often as it occurs in the query (their ``k3`` → ∞).
*Departures*: ``idf(t) = ln(1 + (N − n(t) + 0.5) / (n(t) + 0.5))`` (``N`` documents, ``n(t)`` holding
``t``), the non-negative form Lucene uses, where the Robertson–Spärck Jones weight
``ln((N − n + 0.5) / (n + 0.5))`` turns negative for terms in more than half the documents; terms are
lower-cased ``\\w+`` runs, with no stemming and no stop list.

The collection is the candidate set being ranked (e.g. a contrastive stage's held-out passages), so
its statistics come from the texts BM25 ranks, as a search engine's index would.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

K1 = 1.5
B = 0.75
_TERM = re.compile(r"\w+")


def terms(text: str) -> list[str]:
    """The BM25 terms of ``text``: lower-cased ``\\w+`` runs."""
    return _TERM.findall(text.lower())


class BM25:
    """An index of ``documents``; ``scores(query)`` gives every document's BM25 score ``[M]``.

    Raises:
        ValueError: no documents, ``k1 < 0`` or ``b`` outside [0, 1].
    """

    def __init__(self, documents: Sequence[str], k1: float = K1, b: float = B):
        if not documents:
            raise ValueError("BM25 needs at least one document")
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"need k1 >= 0 and b in [0, 1], got k1={k1}, b={b}")
        counts = [Counter(terms(d)) for d in documents]
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        avgdl = max(float(lengths.mean()), 1e-9)
        norm = k1 * (1.0 - b + b * lengths / avgdl)  # [M]
        postings: dict[str, list[tuple[int, int]]] = {}
        for i, c in enumerate(counts):
            for term, tf in c.items():
                postings.setdefault(term, []).append((i, tf))
        n_docs = len(documents)
        self.n_docs = n_docs
        self.index: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # term → (doc ids, term weights)
        for term, hits in postings.items():
            ids = np.array([i for i, _ in hits])
            tf = np.array([f for _, f in hits], dtype=np.float64)
            idf = math.log(1.0 + (n_docs - len(hits) + 0.5) / (len(hits) + 0.5))
            self.index[term] = (ids, idf * tf * (k1 + 1.0) / (tf + norm[ids]))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` ``[M]`` (0 for a document sharing no term)."""
        out = np.zeros(self.n_docs)
        for term in terms(query):
            if term in self.index:
                ids, weights = self.index[term]
                out[ids] += weights
        return out


def bm25_scores(queries: Sequence[str], documents: Sequence[str], k1: float = K1, b: float = B) -> np.ndarray:
    """Scores ``[N, M]`` of every document for every query, the collection being ``documents``."""
    index = BM25(documents, k1, b)
    return np.stack([index.scores(q) for q in queries]) if queries else np.zeros((0, len(documents)))
