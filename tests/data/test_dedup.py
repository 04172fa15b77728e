"""Tests for lmforge.data.dedup: MinHash estimates, LSH banding, exact and near-duplicate clusters."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from lmforge.config import from_dict
from lmforge.data import dedup
from lmforge.data.dedup import (
    EXACT,
    KEEP,
    NEAR,
    DedupConfig,
    MinHasher,
    find_duplicates,
    lsh_params,
    text_hash,
)
from lmforge.errors import ConfigError

VOCAB = [f"w{i}" for i in range(2000)]


def words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n)]


def jaccard(a: str, b: str, k: int = 5) -> float:
    def shingles(t: str) -> set:
        w = re.findall(r"\w+", t.lower())
        return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def mutate(rng: random.Random, text: str, fraction: float) -> str:
    w = text.split()
    for i in rng.sample(range(len(w)), int(len(w) * fraction)):
        w[i] = rng.choice(VOCAB)
    return " ".join(w)


def hashes(texts: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(text_hash(t) for t in texts), dtype="<u8").reshape(-1, 2)


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(0)
    mh = MinHasher(num_perm=256, seed=3)
    errors = []
    for fraction in (0.0, 0.02, 0.05, 0.1, 0.3, 1.0):
        a = " ".join(words(rng, 400))
        b = mutate(rng, a, fraction)
        sig = mh.signatures([a, b])
        errors.append(abs((sig[0] == sig[1]).mean() - jaccard(a, b)))
    assert max(errors) < 0.08  # standard error at 256 permutations is <= 0.031


def test_signatures_are_deterministic_batched_and_blockwise():
    rng = random.Random(1)
    texts = [" ".join(words(rng, n)) for n in (1, 3, 5, 50, 900, 12_000)] + ["", "!!! ..."]
    a = MinHasher(seed=7).signatures(texts)
    b = np.stack([MinHasher(seed=7).signatures([t])[0] for t in texts])  # one at a time, fresh caches
    assert a.dtype == np.uint32 and a.shape == (len(texts), 128)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, MinHasher(seed=8).signatures(texts))
    assert (a[-2:] == np.iinfo(np.uint32).max).all()  # no words: the empty signature
    # the 12,000-word document goes through the blockwise path; it must equal a direct computation
    mh = MinHasher(seed=7)
    sh = mh.shingles(texts[5])
    direct = ((sh[:, None] * mh._a[None, :] + mh._b).min(axis=0) >> np.uint64(32)).astype(np.uint32)
    assert np.array_equal(a[5], direct)
    assert np.array_equal(mh.signatures(["A B C"]), mh.signatures(["a, b; c"]))  # case and punctuation


def s_curve(s: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard similarity ``s`` share a band (MMDS 3.4.2)."""
    return 1 - (1 - s**rows) ** bands


def test_lsh_params_catch_pairs_at_the_threshold_with_the_longest_bands():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert s_curve(threshold, bands, rows) >= 0.97
        assert s_curve(threshold, 128 // (rows + 1), rows + 1) < 0.97  # one more row would miss more
        assert s_curve(threshold - 0.4, bands, rows) < 0.1  # clearly different pairs rarely collide
    assert lsh_params(0.9, 128)[1] > lsh_params(0.5, 128)[1]  # stricter threshold: longer bands


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="dedup.threshold"):
        from_dict(DedupConfig, {"threshold": 1.5}, prefix="dedup")
    with pytest.raises(ConfigError, match="num_perm"):
        from_dict(DedupConfig, {"num_perm": 2})


def test_exact_duplicates_keep_the_first():
    texts = ["a b c", "x", "a b c", "y", "x", "a b c"]
    found = find_duplicates(hashes(texts), None, DedupConfig(near=False))
    assert found.reason.tolist() == [KEEP, KEEP, EXACT, KEEP, EXACT, EXACT]
    assert found.duplicate_of.tolist() == [0, 1, 0, 3, 1, 0]
    assert found.stats["exact"] == {"clusters": 2, "duplicates": 3, "largest": 3, "sizes": {"2": 1, "3-4": 1}}
    assert "near" not in found.stats


def test_near_duplicates_found_across_parts_and_distinct_documents_kept():
    rng = random.Random(2)
    base = [" ".join(words(rng, 300)) for _ in range(60)]
    texts = list(base)
    planted = {}  # index of a planted near-duplicate → index of its original
    for i in range(0, 60, 3):
        planted[len(texts)] = i
        texts.append(mutate(rng, base[i], 0.01))  # ~1% of words changed: Jaccard ~0.95
    texts.append(base[5])  # an exact duplicate too
    cfg = DedupConfig()
    sig = MinHasher(cfg.num_perm, cfg.shingle_words, cfg.seed).signatures(texts)
    parts = [sig[:25], sig[25:25], sig[25:70], sig[70:]]  # units of different sizes, one empty
    found = find_duplicates(hashes(texts), parts, cfg)
    assert found.reason[:60].tolist() == [KEEP] * 60  # distinct documents all kept
    for dup, original in planted.items():
        assert found.reason[dup] == NEAR and found.duplicate_of[dup] == original
    assert found.reason[-1] == EXACT and found.duplicate_of[-1] == 5
    assert found.stats["near"]["clusters"] == len(planted)
    assert found.stats["near"]["duplicates"] == len(planted)
    whole = find_duplicates(hashes(texts), [sig], cfg)
    assert np.array_equal(whole.reason, found.reason) and np.array_equal(
        whole.duplicate_of, found.duplicate_of
    )


def test_near_clusters_are_transitive_and_keep_the_earliest():
    rng = random.Random(3)
    a = " ".join(words(rng, 400))
    chain = [a]
    for _ in range(4):  # each step changes 2% more: neighbours similar, ends less so
        chain.append(mutate(rng, chain[-1], 0.02))
    texts = [" ".join(words(rng, 400))] + chain[::-1] + ["", ""]
    cfg = DedupConfig(threshold=0.8)
    sig = MinHasher().signatures(texts)
    found = find_duplicates(hashes(texts), [sig], cfg)
    assert found.reason[0] == KEEP and found.reason[1] == KEEP  # first of the chain's cluster is kept
    assert found.reason[2:6].tolist() == [NEAR] * 4 and set(found.duplicate_of[2:6]) == {1}
    assert found.reason[6] == KEEP and found.reason[7] == EXACT  # empty texts: only exact dedup applies


def root(parent: list[int], x: int) -> int:
    while parent[x] != x:
        x = parent[x]
    return x


def test_components_match_a_reference_union_find():
    rng = np.random.default_rng(0)
    for n, m in ((1, 0), (10, 5), (200, 150), (1000, 2000)):
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        parent = list(range(n))
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = root(parent, x), root(parent, y)
            parent[max(rx, ry)] = min(rx, ry)
        expected = [root(parent, x) for x in range(n)]
        assert dedup._components(n, a, b).tolist() == expected


def test_defaults_catch_a_few_words_replaced_and_keep_distinct_documents():
    """The operating point (issue 24): copies with 2.5% of their words replaced (Jaccard ~0.78) are
    near-duplicates (recall >= 0.9); distinct documents sharing a boilerplate block are kept (>= 0.95)."""
    rng = random.Random(11)
    vocab = [f"v{i}" for i in range(5000)]
    base = [[rng.choice(vocab) for _ in range(rng.randint(200, 500))] for _ in range(120)]
    boiler = [rng.choice(vocab) for _ in range(60)]
    distinct = [[rng.choice(vocab) for _ in range(240)] + boiler for _ in range(120)]
    copies = []
    for b in base:
        c = list(b)
        for i in rng.sample(range(len(c)), round(0.025 * len(c))):
            c[i] = rng.choice(vocab)
        copies.append(c)
    texts = [" ".join(w) for w in base + distinct + copies]
    cfg = DedupConfig()
    found = find_duplicates(
        hashes(texts), [MinHasher(cfg.num_perm, cfg.shingle_words, cfg.seed).signatures(texts)], cfg
    )
    recall = np.mean(found.reason[240:] == NEAR)
    kept = np.mean(found.reason[:240] == KEEP)
    assert recall >= 0.9 and kept >= 0.95, (recall, kept)
    assert np.all(
        found.duplicate_of[240:][found.reason[240:] == NEAR] == np.arange(120)[found.reason[240:] == NEAR]
    )
