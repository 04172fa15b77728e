"""Benchmark the data stage: throughput, dedup recall and PII recall, and the ratio to datatrove.

The corpus is assembled from ``../shared/data`` (TinyStories, tiny-shakespeare, WikiText-2,
Europarl en, BoolQ passages, SQuAD contexts, GSM8K problems: about 13 MB of distinct documents),
then planted with exact duplicates (8% of documents, copied with trailing spaces and CRLF line
endings, so only normalisation makes them equal), near duplicates (8%, 1% of words replaced, at
least one) and PII (5%: one e-mail, phone number, IPv4 address, credit card or IBAN written into a
sentence). Copies go to a last file, after their originals. Everything is Parquet, the one format
both pipelines read here (datatrove's JSONL reader needs orjson, not installed).

Three runs on the same input with the same number of worker processes:

1. lmforge, the full default pipeline (normalise, quality, language, PII, audit, exact + near dedup);
2. lmforge with the steps datatrove has here (no language identification: datatrove's needs a
   fastText model download; no audit);
3. datatrove: FTFY → Gopher repetition + quality → PII (e-mails and IPs) → MinHash (signatures,
   buckets, clusters, filter), its documented four-stage recipe. Its English word tokenizer needs
   spaCy (not installed), so it gets a ``\\w+`` tokenizer, the same words lmforge uses.

Dedup recall counts planted copies dropped as duplicates among those whose copy and original both
passed the filters; PII recall counts planted values gone from the output among PII documents kept.

Usage: python bench/data_bench.py [--shared ../shared/data] [--workers 2] [--out DIR] [--no-datatrove]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import tempfile
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
EXACT_FRACTION, NEAR_FRACTION, PII_FRACTION = 0.08, 0.08, 0.05


# --------------------------------------------------------------------------------------------------
# corpus


def _grouped(parts: list[str], size: int = 1500) -> list[str]:
    docs, current = [], []
    for part in parts:
        current.append(part.strip())
        if sum(len(p) for p in current) >= size:
            docs.append("\n\n".join(current))
            current = []
    if current:
        docs.append("\n\n".join(current))
    return docs


def _unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t.strip()))


def assemble(shared: Path) -> dict[str, list[str]]:
    """Distinct documents of several public data sets, by source name."""
    out: dict[str, list[str]] = {}
    out["tinystories"] = _grouped((shared / "tinystories/tinystories.txt").read_text().split("\n\n"))
    out["shakespeare"] = _grouped((shared / "tinyshakespeare/input.txt").read_text().split("\n\n"))
    articles: list[str] = []
    for split in ("valid", "test"):
        text = (shared / f"wikitext-2-tokenized/{split}.txt").read_text()
        articles += re.split(r"\n (?= = [^=])", text)
    out["wikitext"] = articles
    lines = (shared / "europarl-en-fr-20k/europarl-v7.fr-en.en").read_text().splitlines()
    out["europarl"] = ["\n".join(lines[i : i + 30]) for i in range(0, len(lines), 30)]
    boolq = [json.loads(line) for line in (shared / "boolq/dev.jsonl").read_text().splitlines()]
    out["boolq"] = [r["passage"] for r in boolq]
    with zipfile.ZipFile(shared / "squad-v1.1/dev-v1.1.json.zip") as z:
        squad = json.loads(z.read("dev-v1.1.json"))
    out["squad"] = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    gsm = [json.loads(line) for line in (shared / "gsm8k/train.jsonl").read_text().splitlines()]
    out["gsm8k"] = [f"{r['question']}\n{r['answer']}" for r in gsm]
    return {k: [t for t in _unique(v) if len(t) >= 200] for k, v in out.items()}


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i : i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random) -> str:
    bban = "NWBK" + "".join(str(rng.randrange(10)) for _ in range(14))
    numeric = "".join(str(int(c, 36)) for c in bban + "GB00")
    check = 98 - int(numeric) % 97
    return f"GB{check:02d}{bban}"


def pii_sentence(kind: str, i: int, rng: random.Random) -> tuple[str, str]:
    """A sentence holding one planted value of ``kind``, and the value."""
    value = {
        "email": f"j.smith{i}@mailbox{i % 7}.net",
        "phone": f"(415) {rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}",
        "ip": f"{rng.randrange(11, 99)}.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}",
        "credit_card": _luhn_card(rng),
        "iban": _iban(rng),
    }[kind]
    return f"For questions, the contact on file is {value} and replies come within a week.", value


def jaccard(a: str, b: str, k: int = 5) -> float:
    """Jaccard similarity of the two texts' sets of k-word shingles (lower-cased ``\\w+`` words)."""

    def shingles(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i : i + k]) for i in range(max(len(words) - k + 1, 1))}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(len(sa | sb), 1)


def build_corpus(shared: Path, out: Path, seed: int = 0) -> dict:
    """Write the corpus as Parquet files under ``out``; return the planted ground truth."""
    rng = random.Random(seed)
    sources = assemble(shared)
    keys: list[tuple[str, int]] = []
    texts: dict[str, list[str]] = {}
    for s, (name, docs) in enumerate(sources.items()):
        file = f"{s:02d}-{name}.parquet"
        texts[file] = list(docs)
        keys += [(file, row) for row in range(len(docs))]
    n = len(keys)
    chosen = rng.sample(range(n), int(n * (EXACT_FRACTION + NEAR_FRACTION + PII_FRACTION)))
    exact = chosen[: int(n * EXACT_FRACTION)]
    near = chosen[len(exact) : len(exact) + int(n * NEAR_FRACTION)]
    pii = chosen[len(exact) + len(near) :]
    truth: dict = {"copies": {}, "pii": {}}
    kinds = ("email", "phone", "ip", "credit_card", "iban")
    for j, i in enumerate(pii):
        file, row = keys[i]
        sentence, value = pii_sentence(kinds[j % len(kinds)], j, rng)
        parts = texts[file][row].split(". ")
        parts.insert(len(parts) // 2, sentence.rstrip("."))
        texts[file][row] = ". ".join(parts)
        truth["pii"][f"{file}:{row + 1}"] = {"kind": kinds[j % len(kinds)], "value": value}
    copies = []
    for i in exact:
        file, row = keys[i]
        copy = "\r\n".join(line + "  " for line in texts[file][row].split("\n"))
        copies.append((copy, f"{file}:{row + 1}", "exact"))
    for i in near:
        file, row = keys[i]
        words = texts[file][row].split(" ")
        for w in rng.sample(range(len(words)), max(1, len(words) // 100)):
            words[w] = rng.choice(["zebra", "quasar", "marmalade", "tundra", "violin"])
        copies.append((" ".join(words), f"{file}:{row + 1}", "near"))
    rng.shuffle(copies)
    texts["99-planted.parquet"] = [c[0] for c in copies]
    by_key = {f"{f}:{r + 1}": t for f, docs in texts.items() for r, t in enumerate(docs)}
    for row, (copy, original, kind) in enumerate(copies):
        similarity = jaccard(copy, by_key[original])
        truth["copies"][f"99-planted.parquet:{row + 1}"] = {
            "original": original,
            "kind": kind,
            "jaccard": similarity,
        }
    out.mkdir(parents=True, exist_ok=True)
    for file, docs in texts.items():
        ids = [f"{file}:{row + 1}" for row in range(len(docs))]
        pq.write_table(pa.table({"id": ids, "text": docs}), out / file)
    truth["docs"] = sum(len(d) for d in texts.values())
    truth["bytes"] = sum(len(t.encode()) for d in texts.values() for t in d)
    return truth


# --------------------------------------------------------------------------------------------------
# scoring


def score(truth: dict, passed_filters: set[str], output: dict[str, str], dropped_dups: set[str]) -> dict:
    """Dedup and PII recall from what passed the filters, what was written, and what dedup dropped."""
    eligible = [
        c for c, t in truth["copies"].items() if c in passed_filters and t["original"] in passed_filters
    ]
    found = [c for c in eligible if c in dropped_dups]
    by_kind = {k: [c for c in eligible if truth["copies"][c]["kind"] == k] for k in ("exact", "near")}
    by_kind["near, Jaccard >= 0.8"] = [c for c in by_kind["near"] if truth["copies"][c]["jaccard"] >= 0.8]
    by_kind["near, Jaccard < 0.8"] = [c for c in by_kind["near"] if truth["copies"][c]["jaccard"] < 0.8]
    pii_kept = [k for k in truth["pii"] if k in output]
    scrubbed = [k for k in pii_kept if truth["pii"][k]["value"] not in output[k]]
    pii_kinds: dict[str, list[int]] = {}
    for k in pii_kept:
        pii_kinds.setdefault(truth["pii"][k]["kind"], [0, 0])[0] += k in scrubbed
        pii_kinds[truth["pii"][k]["kind"]][1] += 1
    return {
        "dedup_recall": len(found) / max(len(eligible), 1),
        "dedup_eligible": len(eligible),
        "dedup_recall_by_kind": {
            k: f"{sum(c in dropped_dups for c in v) / max(len(v), 1):.3f} of {len(v)}"
            for k, v in by_kind.items()
        },
        "unplanted_dropped_as_duplicates": len(dropped_dups - set(truth["copies"])),
        "pii_recall": len(scrubbed) / max(len(pii_kept), 1),
        "pii_kept": len(pii_kept),
        "pii_recall_by_kind": {k: round(a / b, 3) for k, (a, b) in sorted(pii_kinds.items())},
    }


def _key(doc_id: str) -> str:
    """lmforge's parquet ids are ``path#row``; the ground truth uses ``file:row``."""
    path, row = doc_id.rsplit("#", 1)
    return f"{Path(path).name}:{row}"


def run_lmforge(corpus: Path, out: Path, workers: int, **overrides: object) -> tuple[float, dict, dict]:
    """Run the data stage in this process; returns (seconds, stats, what scoring needs)."""
    from lmforge.config import from_dict
    from lmforge.stages import data

    cfg = from_dict(data.Config, {"input": [str(corpus)], "out": str(out), "workers": workers, **overrides})
    start = time.perf_counter()
    data.main(cfg, force=True)
    seconds = time.perf_counter() - start
    stats = json.loads((out / "stats.json").read_text())
    output = {}
    for split in ("train", "val"):
        for f in sorted((out / split).glob("*.parquet")):
            t = pq.read_table(f)
            output.update(zip(map(_key, t["id"].to_pylist()), t["text"].to_pylist()))
    filtered = {
        _key(json.loads(line)["id"])
        for f in (out / "rejects" / "filtered").glob("*.jsonl")
        for line in f.read_text().splitlines()
    }
    dups = {
        _key(json.loads(line)["id"])
        for f in (out / "rejects" / "duplicates").glob("*.jsonl")
        for line in f.read_text().splitlines()
    }
    everything = set(output) | filtered | dups
    return seconds, stats, {"passed": everything - filtered, "output": output, "dups": dups}


# --------------------------------------------------------------------------------------------------
# datatrove


def run_datatrove(corpus: Path, work: Path, workers: int, files: int) -> tuple[float, dict]:
    """datatrove's comparable pipeline; returns (seconds, what scoring needs)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer
    from loguru import logger

    class WordsTokenizer(WordTokenizer):
        """``\\w+`` words (what lmforge's dedup and quality rules use); sentences end at . ! ? or a newline."""

        def word_tokenize(self, text: str) -> list[str]:
            return re.findall(r"\w+", text)

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in re.finditer(r"[^.!?\n]+[.!?\n]*", text)]

        def sent_tokenize(self, text: str) -> list[str]:
            return [text[a:b] for a, b in self.span_tokenize(text)]

    logger.remove()
    tok = WordsTokenizer()
    config = MinhashConfig(hash_config=HashConfig(hash_fc="sha1", precision=64))
    mid, final = work / "filtered", work / "final"
    stages = [
        (
            [
                ParquetReader(str(corpus), id_key="id"),
                FTFYFormatter(),
                GopherRepetitionFilter(language=tok),
                GopherQualityFilter(language=tok),
                PIIFormatter(),
                ParquetWriter(str(mid)),
            ],
            files,
        ),
        (
            [ParquetReader(str(mid)), MinhashDedupSignature(str(work / "sigs"), config=config, language=tok)],
            files,
        ),
        ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)], config.num_buckets),
        ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1),
        (
            [ParquetReader(str(mid)), MinhashDedupFilter(str(work / "remove")), ParquetWriter(str(final))],
            files,
        ),
    ]
    start = time.perf_counter()
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(work / f"logs{i}")
        ).run()
    seconds = time.perf_counter() - start
    passed = {i for f in mid.glob("*.parquet") for i in pq.read_table(f)["id"].to_pylist()}
    output = {}
    for f in final.glob("*.parquet"):
        t = pq.read_table(f)
        output.update(zip(t["id"].to_pylist(), t["text"].to_pylist()))
    return seconds, {"passed": passed, "output": output, "dups": passed - set(output)}


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--no-datatrove", action="store_true", help="skip the datatrove comparison")
    args = parser.parse_args()
    if not args.shared.is_dir():
        raise SystemExit(f"{args.shared}: not found; this benchmark needs ../shared/data beside the checkout")
    logging.basicConfig(level=logging.WARNING)
    work = args.out or Path(tempfile.mkdtemp(prefix="lmforge-data-bench-"))
    corpus = work / "corpus"
    truth = build_corpus(args.shared, corpus)
    mb = truth["bytes"] / 1e6
    print(f"corpus: {truth['docs']:,} documents, {mb:.1f} MB, {len(truth['copies']):,} planted copies, "
          f"{len(truth['pii']):,} planted PII; {args.workers} workers")  # fmt: skip
    rows = []
    full_s, stats, seen = run_lmforge(corpus, work / "lmforge-full", args.workers)
    rows.append(
        ("lmforge, full default pipeline", full_s, score(truth, seen["passed"], seen["output"], seen["dups"]))
    )
    comparable = {"lang": {"enabled": False}, "audit": {"enabled": False}}
    same_s, _, seen = run_lmforge(corpus, work / "lmforge-comparable", args.workers, **comparable)
    rows.append(
        ("lmforge, datatrove's steps", same_s, score(truth, seen["passed"], seen["output"], seen["dups"]))
    )
    if not args.no_datatrove:
        try:
            import datatrove  # noqa: F401
        except ImportError:
            print("datatrove is not installed (pip install lmforge[bench]); no comparison")
        else:
            dt_s, seen = run_datatrove(
                corpus, work / "datatrove", args.workers, files=len(list(corpus.glob("*")))
            )
            rows.append(
                (
                    "datatrove, comparable steps",
                    dt_s,
                    score(truth, seen["passed"], seen["output"], seen["dups"]),
                )
            )
    print(f"\n{'run':<34}{'seconds':>8}{'docs/s':>9}{'MB/s':>7}{'dedup recall':>14}{'PII recall':>12}")
    for name, seconds, s in rows:
        print(
            f"{name:<34}{seconds:8.1f}{truth['docs'] / seconds:9.0f}{mb / seconds:7.2f}"
            f"{s['dedup_recall']:14.3f}{s['pii_recall']:12.3f}"
        )
    for name, _, s in rows:
        print(
            f"  {name}: {json.dumps({k: v for k, v in s.items() if k not in ('dedup_recall', 'pii_recall')})}"
        )
    if len(rows) == 3:
        print(f"\nthroughput ratio, lmforge / datatrove (same steps): {rows[2][1] / rows[1][1]:.2f}x")
    print(f"lmforge stats: kept {stats['docs_out']:,} of {stats['docs_in']:,}; drops {stats['drops']}")


if __name__ == "__main__":
    main()
