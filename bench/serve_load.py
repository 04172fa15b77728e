"""Load test of ``lmforge serve``: 1, then 16, then 32 concurrent streaming clients against a local server.

The server runs in a child process (so the clients' HTTP and JSON work does not compete with the model
thread for this process's GIL), bound to 127.0.0.1 on an ephemeral port, over a checkpoint given with
``--model`` or, by default, a random-weight decoder of the tiny demo's shape (4 layers, n_embd 192,
4 heads, context 256, BPE vocabulary 4096 trained on the built-in Python docs). Each client loops for
``--seconds``: a streaming ``/v1/completions`` request (a random prompt of 8-24 words, ``--max_tokens``
new tokens, temperature 0.8, its own seed) with ``stream_options.include_usage`` so the token count is
the server's own; requests in flight when the time is up are finished and counted.

The levels run in ``--rounds`` rounds (1, 16, 32, then again), each level ``--seconds / --rounds`` per
round, so a change in the machine's load hits every level alike. Printed per level and round, then per
level over all rounds: requests, errors, completion tokens, aggregate tokens/s (tokens / wall time),
request latency p50/p99, time to first token p50/p99; then the ratios of aggregate tokens/s at 16 and
32 clients to 1 client, over all rounds and as the median of the per-round ratios (goal: >= 4x at 16).
Trust the ratios over the absolute numbers on a shared machine; the load average is printed.

    python bench/serve_load.py [--seconds 60] [--rounds 3] [--levels 1,16,32] [--max_tokens 64] [--model CKPT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# isort: off
import lmforge  # noqa: F401  (first: sets OpenMP's passive wait policy before torch loads it)

# isort: on

WORDS = "the of and to a in is that for it as with was on be by this are from or an which".split()


def build_checkpoint(root: Path) -> Path:
    """A random-weight decoder of the tiny demo's shape with a BPE tokenizer trained on Python docs."""
    import itertools

    import torch

    from lmforge.data.builtin import iter_python_docs
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    texts = [d.text for d in itertools.islice(iter_python_docs("builtin:python-docs"), 3000)]
    tok = train_bpe(texts, vocab_size=4096)
    tok_path = save_tokenizer(tok, root / "tok")
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(), block_size=256, n_layer=4, n_head=4, n_embd=192, pos="rope"
    )
    torch.manual_seed(0)
    return save_checkpoint(root / "model", build_model(cfg), cfg, tokenizer_path=tok_path)


@contextlib.contextmanager
def served(
    ckpt: str, threads: int = 0, max_batch: int = 32, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``(child process, base URL)`` of ``ckpt`` served by a child process of this script (``serve_child``)
    on an ephemeral loopback port, once ``/health`` answers; ``env`` is added to its environment."""
    import httpx

    cmd = [sys.executable, __file__, "--serve-child", ckpt]
    cmd += ["--threads", str(threads), "--max_batch", str(max_batch)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        url = f"http://127.0.0.1:{int(child.stdout.readline())}"
        for _ in range(300):
            try:
                httpx.get(url + "/health").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield child, url
    finally:
        child.terminate()
        child.wait(10)


def serve_child(ckpt: str, threads: int, max_batch: int) -> None:
    """Child mode: serve ``ckpt`` on an ephemeral loopback port, print the port, run until killed."""
    import socket

    import uvicorn

    from lmforge.serve.app import ServeSettings, create_app

    app = create_app(
        ckpt, ServeSettings(name="bench", threads=threads, max_batch=max_batch, max_concurrent=256)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


async def client(url: str, seed: int, deadline: float, max_tokens: int, out: dict) -> None:
    import httpx

    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as http:
        while time.monotonic() < deadline:
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))
            body = {
                "model": "bench",
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": rng.randrange(2**31),
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            start = time.monotonic()
            first = None
            tokens = None
            try:
                async with http.stream("POST", url + "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        out["errors"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                        continue
                    done = False
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            done = True
                            continue
                        chunk = json.loads(data)
                        if "error" in chunk:
                            out["errors"].append(chunk["error"]["message"])
                        elif chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                        elif first is None:
                            first = time.monotonic() - start
                    if not done or tokens is None:
                        out["errors"].append("stream ended without usage and [DONE]")
                        continue
            except Exception as e:  # counted, not fatal: the point is to see them
                out["errors"].append(f"{type(e).__name__}: {e}")
                continue
            out["latency"].append(time.monotonic() - start)
            out["ttft"].append(first if first is not None else time.monotonic() - start)
            out["tokens"] += tokens


async def level(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    out = {"errors": [], "latency": [], "ttft": [], "tokens": 0}
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(
        *(client(url, 1000 * clients + i, deadline, max_tokens, out) for i in range(clients))
    )
    out["wall"] = time.monotonic() - start
    return out


HEADER = (
    f"{'clients':>7} {'requests':>8} {'errors':>6} {'tokens':>7} {'tok/s':>8} {'lat p50':>8} {'lat p99':>8} "
    f"{'ttft p50':>8} {'ttft p99':>8}"
)


def row(label: str, r: dict) -> str:
    tps = r["tokens"] / r["wall"]
    return (
        f"{label:>7} {len(r['latency']):>8} {len(r['errors']):>6} {r['tokens']:>7} {tps:>8.1f} "
        f"{pct(r['latency'], 0.5):>7.2f}s {pct(r['latency'], 0.99):>7.2f}s "
        f"{pct(r['ttft'], 0.5):>7.2f}s {pct(r['ttft'], 0.99):>7.2f}s"
    )


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="time per concurrency level")
    ap.add_argument("--levels", default="1,16,32", help="numbers of concurrent clients")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the levels (time split evenly)")
    ap.add_argument("--max_tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument(
        "--model", default="", help="checkpoint to serve (default: a random tiny-demo-shaped one)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the server (0 = default)")
    ap.add_argument("--max_batch", type=int, default=32, help="the scheduler's rows at once")
    ap.add_argument("--serve-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_child:
        serve_child(args.serve_child, args.threads, args.max_batch)
        return
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.model or str(build_checkpoint(Path(tmp)))
        with served(ckpt, args.threads, args.max_batch) as (child, url):
            health = httpx.get(url + "/health").json()
            print(
                f"server: {ckpt} ({health['arch']}), pid {child.pid}, {url}; max_batch {args.max_batch}, "
                f"{args.seconds:g} s per level, {args.max_tokens} new tokens per request, load {os.getloadavg()}"
            )
            levels = [int(x) for x in args.levels.split(",")]
            per_round: dict[int, list[dict]] = {n: [] for n in levels}
            print(HEADER)
            for rnd in range(args.rounds):
                for n in levels:
                    r = asyncio.run(level(url, n, args.seconds / args.rounds, args.max_tokens))
                    per_round[n].append(r)
                    print(row(f"{n} r{rnd + 1}", r), flush=True)
            print("all rounds:")
            for n in levels:
                rs = per_round[n]
                total = {
                    k: sum((r[k] for r in rs), [] if k in ("errors", "latency", "ttft") else 0)
                    for k in ("errors", "latency", "ttft", "tokens", "wall")
                }
                print(row(str(n), total))
                for e in sorted(set(total["errors"]))[:5]:
                    print(f"        error: {e}")
            stats = httpx.get(url + "/health").json()["stats"]
            print(f"scheduler: {stats}")
            if 1 in per_round:

                def tps(rs: list[dict]) -> float:
                    return sum(r["tokens"] for r in rs) / sum(r["wall"] for r in rs)

                for n in levels:
                    if n == 1:
                        continue
                    ratios = [tps([a]) / tps([b]) for a, b in zip(per_round[n], per_round[1])]
                    goal = " (goal >= 4x)" if n == 16 else ""
                    print(
                        f"aggregate tokens/s, {n} clients vs 1: {tps(per_round[n]) / tps(per_round[1]):.2f}x over "
                        f"all rounds, median of rounds {statistics.median(ratios):.2f}x "
                        f"({', '.join(f'{x:.2f}' for x in ratios)}){goal}"
                    )
            print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
