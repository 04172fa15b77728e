"""Tokenizer benchmark: training time, held-out comparison and encode MB/s for every kind, in one run.

Text: a few MB of real English from ../shared/data (tiny-shakespeare, TinyStories, Europarl) split
into documents; the first ``--train-mb`` train every kind at the same vocabulary size, the last 10%
are held out for the comparison table (lmforge.tokenizer.compare).

Encode throughput over all the text, per kind:

- ``encode_batch`` — plain ``tokenizers`` in one process (its own thread pool): the baseline;
- ``encode_batch_fast`` — the same without offsets;
- ``tiktoken 1 thread`` / ``tiktoken encode_ordinary_batch`` — a tiktoken Encoding built from our
  BPE (BPE only);
- ``sharded (ours)`` — ``encode_to_shards`` with ``--workers`` and the ``auto`` backend (tiktoken on
  threads for BPE, tokenizers on spawned processes otherwise), writing real shards, start-up
  included; for BPE also with the ``tokenizers`` backend.

Timings are the best of ``--repeat`` interleaved runs.

Goal (issue 4): sharded >= 3x plain ``encode_batch`` MB/s on 2 cores.
Usage: python bench/tokenizer_bench.py [--train-mb 1] [--vocab 4096] [--workers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lmforge.tokenizer.compare import comparison_table, evaluate_tokenizer
from lmforge.tokenizer.encoders import DocEncoder, choose_backend, tiktoken_encoding
from lmforge.tokenizer.shards import encode_to_shards
from lmforge.tokenizer.train import KINDS, TextSample, TokenizerSpec, save_tokenizer, train_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_documents() -> list[str]:
    """Paragraph documents from tiny-shakespeare and TinyStories, 10-line documents from Europarl."""
    docs: list[str] = []
    for name in ("tinyshakespeare/input.txt", "tinystories/tinystories.txt"):
        text = (DATA / name).read_text(encoding="utf-8")
        docs += [d.strip() for d in text.split("\n\n") if d.strip()]
    lines = (DATA / "europarl-en-fr-20k/europarl-v7.fr-en.en").read_text(encoding="utf-8").splitlines()
    docs += ["\n".join(lines[i : i + 10]) for i in range(0, len(lines), 10)]
    return docs


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_kind(
    kind: str, docs: list[str], held_out: list[str], args: argparse.Namespace, tmp: Path
) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """Train one kind, measure it on held-out text, time every encode path; (metrics, speed rows)."""
    total_mb = sum(len(d.encode()) for d in docs) / 1e6
    sample = TextSample(docs[: -len(held_out)], int(args.train_mb * 1e6))
    start = time.perf_counter()
    tok = train_tokenizer(sample, TokenizerSpec(kind=kind, vocab_size=args.vocab))
    train_s = time.perf_counter() - start
    path = save_tokenizer(tok, tmp / kind)
    metrics = {**evaluate_tokenizer(tok, held_out), "train_time_s": train_s}
    print(f"trained {kind:<9} on {sample.bytes / 1e6:.2f} MB in {train_s:6.2f} s")

    paths: list[tuple[str, Callable[[], object]]] = [
        ("encode_batch (baseline)", lambda: tok.encode_batch(docs)),
        ("encode_batch_fast", lambda: tok.encode_batch_fast(docs)),
    ]
    if kind == "bpe":
        try:
            enc = tiktoken_encoding(tok)
        except ImportError:
            print("tiktoken not installed: its rows are skipped")
        else:
            one = DocEncoder(tok, "tiktoken")
            same = one(docs) == DocEncoder(tok, "tokenizers")(docs)
            print(f"tiktoken ids identical to tokenizers on all {len(docs)} documents: {same}")
            paths.append(("tiktoken 1 thread", lambda: one(docs)))
            paths.append(("tiktoken encode_ordinary_batch", lambda: enc.encode_ordinary_batch(docs)))
    for backend in ["auto", "tokenizers"] if kind == "bpe" else ["auto"]:
        chosen = choose_backend(tok, backend, docs[:64])
        how = "threads" if chosen == "tiktoken" else "processes"
        out = tmp / f"{kind}-tokens"
        paths.append(
            (
                f"sharded (ours): {chosen}, {args.workers} {how}",
                lambda b=backend, o=out: encode_to_shards(docs, path, o, workers=args.workers, backend=b),
            )
        )
    best = {label: float("inf") for label, _ in paths}
    for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere hits every path alike
        for label, fn in paths:
            best[label] = min(best[label], best_seconds(fn, 1))
    rows = [(kind, label, total_mb / seconds) for label, seconds in best.items()]
    for _, label, speed in rows[2:]:
        print(f"  {kind}: {label}: {speed:.2f} MB/s = {speed / rows[0][2]:.2f}x encode_batch")
    return metrics, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-mb", type=float, default=1.0, help="training text per kind, MB")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="encode timings: best of this many")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: this benchmark reads the shared data sets beside the checkout")

    docs = load_documents()
    held_out = docs[-len(docs) // 10 :]
    total_mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"text: {len(docs)} documents, {total_mb:.2f} MB; {os.cpu_count()} CPU(s); vocab {args.vocab}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-tokbench-"))
    results: dict[str, dict[str, float]] = {}
    speed_rows: list[tuple[str, str, float]] = []
    try:
        for kind in KINDS:
            results[kind], rows = bench_kind(kind, docs, held_out, args, tmp)
            speed_rows += rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n## Held-out comparison\n")
    print(comparison_table(results))
    print("\n## Encode throughput (all text, MB/s; ratio to plain encode_batch of the same kind)\n")
    print("| kind | path | MB/s | x encode_batch |\n|---|---|---|---|")
    baseline = {kind: mb for kind, label, mb in speed_rows if label.startswith("encode_batch (")}
    for kind, label, mb in speed_rows:
        print(f"| {kind} | {label} | {mb:.2f} | {mb / baseline[kind]:.2f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (other processes on the machine skew timings)")


if __name__ == "__main__":
    main()
