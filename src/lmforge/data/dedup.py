"""Exact and near-duplicate detection over a whole corpus, in two passes that scale past memory.

Pass 1 runs per work unit, in parallel, one document at a time: :class:`MinHasher` turns each kept
document into a fixed-size MinHash signature and :func:`text_hash` into a 128-bit hash of its
(already normalised) text. Both go to disk as ``.npy`` arrays next to the unit's documents.

Pass 2, :func:`find_duplicates`, is global, so duplicates are found *across* units and files:

- **Exact**: documents with equal text hashes form a cluster; the first (lowest global index) is kept,
  the others are dropped as ``exact_duplicate``.
- **Near**: among the documents left, MinHash signatures (Broder 1997, "On the resemblance and
  containment of documents") estimate the Jaccard similarity of their sets of word shingles. LSH
  banding (Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3.4) splits each signature
  into ``bands`` bands of ``rows`` values; two documents that agree on a whole band are candidates.
  Candidates are linked when their signatures agree on at least ``threshold`` of their values (the
  estimated Jaccard similarity), clusters are the connected components of those links, and the first
  document of each cluster is kept; the others are dropped as ``near_duplicate``.

Departures from the textbook recipe, for speed and memory:

- permutations are multiply-shift hashes ``(a·x + b) mod 2^64`` of 64-bit shingle hashes, keeping the
  top 32 bits (Dietzfelbinger et al. 1997), computed for a batch of documents at once in numpy;
- shingles are ``shingle_words`` consecutive words of the lower-cased text (words are ``\\w+`` runs),
  each word hashed with CRC-32, so hashing is the same in every process (Python's ``hash`` is salted);
- candidate pairs are *verified* against the signature before linking (so ``threshold`` means what
  it says whatever the banding), which lets the banding favour recall: ``bands × rows`` puts a pair
  *at* the threshold among the candidates with probability 0.97 (the textbook choice, S-curve
  midpoint at the threshold, misses half of them);
- pass 2 holds only 16 bytes of text hash plus, per band, 8 bytes of band key per document in memory;
  signatures stay on disk (memory-mapped), so its memory grows with the number of documents, not
  their size.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lmforge.config import at_least, opt
from lmforge.errors import ConfigError

__all__ = [
    "DedupConfig",
    "Duplicates",
    "MinHasher",
    "KEEP",
    "EXACT",
    "NEAR",
    "REASONS",
    "find_duplicates",
    "lsh_params",
    "text_hash",
]

KEEP, EXACT, NEAR = 0, 1, 2
REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}
_WORD = re.compile(r"\w+")
_MAX32 = np.uint32(0xFFFFFFFF)
_SHIFT = np.uint64(32)
_BLOCK_ROWS = 8192  # shingles hashed per numpy block: 8192 × num_perm × 8 bytes (8 MB at 128)


@dataclass
class DedupConfig:
    """Exact and near-duplicate removal (keeps the first document of every cluster)."""

    exact: bool = opt(True, "drop documents whose normalised text equals an earlier document's")
    near: bool = opt(True, "drop near-duplicates (MinHash + LSH over word shingles)")
    threshold: float = opt(
        0.7,
        "estimated Jaccard similarity of word shingles at which two documents are near-duplicates (0.7:"
        " a few words replaced in 100, Jaccard ~0.78, is caught; bench/near_dup.py)",
    )
    num_perm: int = opt(128, "MinHash signature length (more: finer similarity estimates, slower)")
    shingle_words: int = opt(5, "words per shingle")
    seed: int = opt(1, "seed of the MinHash hash functions")

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("threshold", f"must be in (0, 1], got {self.threshold}")
        if not 8 <= self.num_perm <= 1024:
            raise ConfigError("num_perm", f"must be in [8, 1024], got {self.num_perm}")
        at_least(self, 1, "shingle_words")

    @property
    def bands_rows(self) -> tuple[int, int]:
        """``(bands, rows)`` of the LSH banding for this threshold and signature length."""
        return lsh_params(self.threshold, self.num_perm)


def text_hash(text: str) -> bytes:
    """128-bit BLAKE2b digest of ``text`` (UTF-8): equal digests mean equal texts, for all practical purposes."""
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, recall: float = 0.97) -> tuple[int, int]:
    """Bands and rows (``bands × rows <= num_perm``) so that a pair *at* ``threshold`` is caught.

    Two documents of Jaccard similarity ``s`` share a band with probability ``1 - (1 - s^rows)^bands``
    (MMDS ch. 3.4.2). Returns the longest bands (most ``rows``, fewest spurious candidates) for which a
    pair of similarity ``threshold`` becomes a candidate with probability >= ``recall``; pairs more
    similar are caught more surely. The extra candidates below the threshold are removed by verification.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


class MinHasher:
    """MinHash signatures of documents' word-shingle sets (Broder 1997), a batch at a time.

    Args:
        num_perm: signature length (number of hash functions).
        shingle_words: words per shingle; a document with fewer words is one shingle.
        seed: seed of the hash functions (same seed → same signatures in every process).

    A document without any word has the all-``0xFFFFFFFF`` signature and is never a near-duplicate.
    """

    def __init__(self, num_perm: int = 128, shingle_words: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.k = shingle_words
        self._a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
        self._b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self._mix = rng.integers(1, 2**63, shingle_words, dtype=np.uint64) | np.uint64(1)
        self._words: dict[str, int] = {}

    def _word_ids(self, text: str) -> np.ndarray:
        """CRC-32 of every ``\\w+`` word of the lower-cased text, shape ``(n_words,)``."""
        words = _WORD.findall(text.lower())
        cache = self._words
        try:
            hashed = [cache[w] for w in words]
        except KeyError:
            if len(cache) > 1_000_000:
                cache.clear()
            for w in set(words).difference(cache):
                cache[w] = zlib.crc32(w.encode("utf-8", errors="surrogatepass"))
            hashed = [cache[w] for w in words]
        return np.array(hashed, dtype=np.uint64)

    def _windows(self, ids: np.ndarray) -> np.ndarray:
        """``sum_j ids[i + j] · mix[j]`` (mod 2^64) for every window of k words (all words if fewer)."""
        k = min(self.k, len(ids))
        m = len(ids) - k + 1
        h = ids[:m] * self._mix[0]
        for j in range(1, k):
            h += ids[j : j + m] * self._mix[j]
        return h

    def shingles(self, text: str) -> np.ndarray:
        """64-bit hashes of the document's shingles, shape ``(n_shingles,)`` (may repeat; minima don't care)."""
        ids = self._word_ids(text)
        return self._windows(ids) if len(ids) else ids

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """MinHash signatures of ``texts``, shape ``(len(texts), num_perm)``, dtype uint32.

        Documents are hashed a batch at a time: their words are concatenated, every k-word window
        hashed at once, the windows crossing a document boundary left out, and each document's
        minimum taken with one ``reduceat``.
        """
        out = np.full((len(texts), self.num_perm), _MAX32, dtype=np.uint32)
        batch: list[np.ndarray] = []
        which: list[int] = []
        rows = 0
        for i, text in enumerate(texts):
            ids = self._word_ids(text)
            if len(ids) == 0:
                continue
            if len(ids) < self.k or len(ids) >= _BLOCK_ROWS:  # one shingle, or a big document
                out[i] = self._min_blocks(self._windows(ids))
                continue
            if rows + len(ids) > _BLOCK_ROWS:
                self._flush(batch, which, out)
                batch, which, rows = [], [], 0
            batch.append(ids)
            which.append(i)
            rows += len(ids)
        self._flush(batch, which, out)
        return out

    def _hash(self, sh: np.ndarray) -> np.ndarray:
        v = self._a[:, None] * sh[None, :]  # (num_perm, n), wraps mod 2^64
        v += self._b[:, None]
        return v

    def _min_blocks(self, sh: np.ndarray) -> np.ndarray:
        best = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, sh.size, _BLOCK_ROWS):
            np.minimum(best, self._hash(sh[start : start + _BLOCK_ROWS]).min(axis=1), out=best)
        return (best >> _SHIFT).astype(np.uint32)  # top 32 bits; >> is monotone, so min commutes

    def _flush(self, batch: list[np.ndarray], which: list[int], out: np.ndarray) -> None:
        if not batch:
            return
        lengths = np.array([len(b) for b in batch])
        counts = lengths - self.k + 1  # whole windows per document (every document has >= k words)
        doc_starts = np.cumsum(lengths) - lengths
        seg_starts = np.cumsum(counts) - counts
        keep = np.arange(counts.sum()) + np.repeat(doc_starts - seg_starts, counts)
        shingles = self._windows(np.concatenate(batch))[keep]
        mins = np.minimum.reduceat(self._hash(shingles), seg_starts, axis=1)  # (num_perm, documents)
        out[which] = (mins.T >> _SHIFT).astype(np.uint32)


# --------------------------------------------------------------------------------------------------
# pass 2


@dataclass
class Duplicates:
    """Result of :func:`find_duplicates` for ``N`` documents in global order.

    Attributes:
        reason: ``(N,)`` int8: ``KEEP``, ``EXACT`` or ``NEAR``.
        duplicate_of: ``(N,)`` int64: global index of the earlier document this one duplicates (itself if
            kept): for an exact duplicate, the first document with the same text; for a near-duplicate,
            the kept document of its cluster.
        stats: cluster counts and sizes (JSON-able).
    """

    reason: np.ndarray
    duplicate_of: np.ndarray
    stats: dict = field(default_factory=dict)


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of every run of equal values in a sorted 1-D array (or sorted rows of a 2-D one)."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    diff = sorted_keys[1:] != sorted_keys[:-1]
    if diff.ndim == 2:
        diff = diff.any(axis=1)
    starts = np.concatenate([[0], np.flatnonzero(diff) + 1])
    lengths = np.diff(np.concatenate([starts, [len(sorted_keys)]]))
    return starts, lengths


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label of every node 0..n-1 = the smallest node of its connected component under edges (a, b).

    Min-label propagation with pointer jumping, vectorised: each round gives both ends of every edge
    the smaller of their labels, then replaces each label by its label's label until stable.
    """
    labels = np.arange(n, dtype=np.int64)
    while True:
        before = labels.copy()
        low = np.minimum(labels[a], labels[b])
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def _size_histogram(sizes: np.ndarray) -> dict[str, int]:
    hist: dict[str, int] = {}
    for lo, hi, name in ((2, 2, "2"), (3, 4, "3-4"), (5, 9, "5-9"), (10, 99, "10-99"), (100, None, "100+")):
        n = int(((sizes >= lo) & (sizes <= (hi or sizes.max(initial=0)))).sum())
        if n:
            hist[name] = n
    return hist


class _Signatures:
    """Per-unit signature arrays (often memory-mapped) addressed by global row index."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def band(self, cols: slice, mix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(key, empty)`` per document: a 64-bit hash of ``signatures[:, cols]`` and whether those
        values are all ``0xFFFFFFFF`` (no words). One part at a time, so only 9 bytes per document
        are held."""
        keys, empty = [np.empty(0, np.uint64)], [np.empty(0, bool)]
        for part in self.parts:
            cols_of = np.asarray(part[:, cols])
            keys.append(cols_of.astype(np.uint64) @ mix)  # wraps mod 2^64
            empty.append((cols_of == _MAX32).all(axis=1))
        return np.concatenate(keys), np.concatenate(empty)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Full signatures of the documents at global ``index`` (any order)."""
        width = self.parts[0].shape[1] if self.parts else 0
        out = np.empty((len(index), width), dtype=np.uint32)
        unit = np.searchsorted(self.offsets, index, side="right") - 1
        for u in np.unique(unit):
            sel = unit == u
            local = index[sel] - self.offsets[u]
            order = np.argsort(local)  # memory maps read best in order
            rows = np.asarray(self.parts[u][local[order]])
            out[np.flatnonzero(sel)[order]] = rows
        return out


def find_duplicates(
    hashes: np.ndarray, signatures: Sequence[np.ndarray] | None, cfg: DedupConfig
) -> Duplicates:
    """Find exact and near-duplicate clusters of a corpus; keep the first document of each.

    Args:
        hashes: ``(N, 2)`` uint64: the 128-bit :func:`text_hash` of every document, in global order.
        signatures: the MinHash signatures in global order, as consecutive ``(n_i, num_perm)`` uint32
            parts (one per work unit; memory-mapped ``.npy`` files are fine). None when ``cfg.near`` is off.
        cfg: which passes to run and the near-duplicate threshold and banding.

    Returns:
        Per-document reason and the document each duplicates, plus cluster statistics.
    """
    n = len(hashes)
    reason = np.zeros(n, dtype=np.int8)
    duplicate_of = np.arange(n, dtype=np.int64)
    stats: dict = {}
    if cfg.exact and n:
        order = np.lexsort((hashes[:, 1], hashes[:, 0]))  # stable: equal texts stay in index order
        starts, lengths = _runs(hashes[order])
        multi = lengths > 1
        first = np.repeat(order[starts], lengths)
        dup = order[first != order]
        duplicate_of[order] = first
        reason[dup] = EXACT
        stats["exact"] = {
            "clusters": int(multi.sum()),
            "duplicates": int(len(dup)),
            "largest": int(lengths.max(initial=0)) if multi.any() else 0,
            "sizes": _size_histogram(lengths[multi]),
        }
    if cfg.near and n and signatures is not None:
        stats["near"] = _near(_Signatures(signatures), reason, duplicate_of, cfg)
    return Duplicates(reason=reason, duplicate_of=duplicate_of, stats=stats)


def _near(sigs: _Signatures, reason: np.ndarray, duplicate_of: np.ndarray, cfg: DedupConfig) -> dict:
    """Mark near-duplicates among the documents still kept (updates ``reason`` and ``duplicate_of`` in place)."""
    bands, rows = cfg.bands_rows
    alive = np.flatnonzero(reason == KEEP)
    rng = np.random.default_rng(cfg.seed + 7919)
    mix = rng.integers(1, 2**63, rows, dtype=np.uint64) | np.uint64(1)
    pairs_a: list[np.ndarray] = []
    pairs_b: list[np.ndarray] = []
    for band in range(bands):
        keys, empty = sigs.band(slice(band * rows, (band + 1) * rows), mix)
        keys, empty = keys[alive], empty[alive]  # (n_alive,)
        order = np.argsort(keys, kind="stable")
        order = order[~empty[order]]
        starts, lengths = _runs(keys[order])
        sel = lengths > 1
        if not sel.any():
            continue
        # pair each bucket member with the bucket's first member and with its predecessor
        sizes = lengths[sel]
        first = np.repeat(starts[sel], sizes)
        offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # rank in bucket
        pos = first + offset
        member = offset > 0
        a = np.concatenate([order[first[member]], order[pos[member] - 1]])
        b = np.concatenate([order[pos[member]], order[pos[member]]])
        pairs_a.append(alive[a])
        pairs_b.append(alive[b])
    a = np.concatenate(pairs_a or [np.empty(0, np.int64)])
    b = np.concatenate(pairs_b or [np.empty(0, np.int64)])
    edges = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    kept_edges = [np.empty((0, 2), np.int64)]
    for start in range(0, len(edges), 65536):
        chunk = edges[start : start + 65536]
        agree = (sigs.rows(chunk[:, 0]) == sigs.rows(chunk[:, 1])).mean(axis=1)
        kept_edges.append(chunk[agree >= cfg.threshold])
    verified = np.concatenate(kept_edges)
    nodes, inverse = np.unique(verified, return_inverse=True)  # sorted: smallest compact id = smallest index
    inverse = inverse.reshape(-1, 2)
    labels = _components(len(nodes), inverse[:, 0], inverse[:, 1])
    root = nodes[labels]
    dup = nodes[root != nodes]
    reason[dup] = NEAR
    duplicate_of[dup] = root[root != nodes]
    _, sizes = np.unique(root, return_counts=True)
    return {
        "clusters": int(len(sizes)),
        "duplicates": int(len(dup)),
        "largest": int(sizes.max(initial=0)),
        "sizes": _size_histogram(sizes),
        "candidate_pairs": int(len(edges)),
        "verified_pairs": int(len(verified)),
        "bands": bands,
        "rows": rows,
    }
