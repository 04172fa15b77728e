"""Near-duplicate detection at its operating point: recall on planted near-duplicates, the share of
distinct documents kept, and the S-curve (detection probability against true Jaccard similarity).

A corpus is planted from a 5,000-word vocabulary: ``--originals`` documents of 200-600 words; for each
a copy with ``--edit`` of its words replaced (2.5%: "a few words replaced", Jaccard of 5-word shingles
about 0.78); ``--distinct`` documents of 240 own words plus a shared 60-word boilerplate block (distinct
documents that still overlap). Then, for the S-curve, pairs at edit rates from 0 to 30% and their true
Jaccard, bucketed. Each threshold runs lmforge's own ``find_duplicates`` (MinHash 128 + LSH banding +
signature verification); datatrove's default (14 bands x 8 rows, no verification) is the analytic
column beside it. Prints tables; ``--figure PATH`` also draws the S-curve.

    python bench/near_dup.py [--thresholds 0.8,0.75,0.7,0.65] [--figure docs/figures/near_dup_scurve.png]
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from lmforge.data.dedup import KEEP, NEAR, DedupConfig, MinHasher, find_duplicates, text_hash

VOCAB = [f"w{i}" for i in range(5000)]


def jaccard(a: list[str], b: list[str], k: int = 5) -> float:
    sa = {tuple(a[i : i + k]) for i in range(len(a) - k + 1)}
    sb = {tuple(b[i : i + k]) for i in range(len(b) - k + 1)}
    return len(sa & sb) / len(sa | sb)


def mutate(rng: random.Random, words: list[str], fraction: float) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), round(len(out) * fraction)):
        out[i] = rng.choice(VOCAB)
    return out


def detect(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    hashes = np.frombuffer(b"".join(text_hash(t) for t in texts), dtype="<u8").reshape(-1, 2)
    sig = MinHasher(cfg.num_perm, cfg.shingle_words, cfg.seed).signatures(texts)
    return find_duplicates(hashes, [sig], cfg).reason


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--originals", type=int, default=400)
    ap.add_argument("--distinct", type=int, default=400)
    ap.add_argument("--edit", type=float, default=0.025, help="share of words replaced in a planted copy")
    ap.add_argument("--thresholds", default="0.8,0.75,0.7,0.65")
    ap.add_argument("--figure", default="", help="write the S-curve here (PNG)")
    args = ap.parse_args()
    rng = random.Random(7)
    base = [[rng.choice(VOCAB) for _ in range(rng.randint(200, 600))] for _ in range(args.originals)]
    boiler = [rng.choice(VOCAB) for _ in range(60)]
    distinct = [[rng.choice(VOCAB) for _ in range(240)] + boiler for _ in range(args.distinct)]
    copies = [mutate(rng, b, args.edit) for b in base]
    texts = [" ".join(w) for w in base + distinct + copies]
    n_orig = len(base) + len(distinct)
    mean_j = np.mean([jaccard(b, c) for b, c in zip(base, copies)])
    print(f"planted: {len(base)} originals + copies with {args.edit:.1%} of words replaced (mean Jaccard "
          f"{mean_j:.3f}), {len(distinct)} distinct documents sharing a 60-word block")  # fmt: skip
    print(f"{'threshold':>9} {'bands x rows':>12} {'recall':>7} {'kept':>6}")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for t in thresholds:
        cfg = DedupConfig(threshold=t)
        reason = detect(texts, cfg)
        recall = float(np.mean(reason[n_orig:] == NEAR))
        kept = float(np.mean(reason[:n_orig] == KEEP))
        b, r = cfg.bands_rows
        print(f"{t:>9.2f} {f'{b} x {r}':>12} {recall:>7.3f} {kept:>6.3f}")

    # the S-curve: pairs at many edit rates, bucketed by their true Jaccard
    pairs, truth = [], []
    for rate in np.linspace(0.0, 0.3, 31):
        for _ in range(60):
            a = [rng.choice(VOCAB) for _ in range(400)]
            b = mutate(rng, a, float(rate))
            pairs.append((" ".join(a), " ".join(b)))
            truth.append(jaccard(a, b))
    truth = np.array(truth)
    bins = np.arange(0.2, 1.0001, 0.05)
    rows = {}
    for t in thresholds:
        cfg = DedupConfig(threshold=t)
        texts = [x for pair in pairs for x in pair]
        reason = detect(texts, cfg)
        hit = reason[1::2] == NEAR
        rows[t] = [float(np.mean(hit[(truth >= lo) & (truth < lo + 0.05)])) if np.any((truth >= lo) & (truth < lo + 0.05)) else float("nan") for lo in bins[:-1]]  # fmt: skip
    print("\nS-curve: share of pairs detected, by true Jaccard of 5-word shingles")
    print(f"{'Jaccard':>11} " + " ".join(f"{f't={t:g}':>7}" for t in thresholds) + f" {'datatrove':>9}")
    for i, lo in enumerate(bins[:-1]):
        mid = lo + 0.025
        dt = 1 - (1 - mid**8) ** 14  # 14 bands x 8 rows, every candidate a duplicate
        cells = " ".join(f"{rows[t][i]:>7.2f}" for t in thresholds)
        print(f"{lo:>5.2f}-{lo + 0.05:<5.2f} {cells} {dt:>9.2f}")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        mids = bins[:-1] + 0.025
        for t in thresholds:
            ax.plot(mids, rows[t], marker="o", ms=3, label=f"lmforge, threshold {t:g}")
        s = np.linspace(0.2, 1, 100)
        ax.plot(s, 1 - (1 - s**8) ** 14, "k--", lw=1, label="datatrove 14x8 (analytic)")
        ax.axvline(mean_j, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("true Jaccard similarity (5-word shingles)")
        ax.set_ylabel("share detected")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=120)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
