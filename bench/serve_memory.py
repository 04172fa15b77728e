"""Memory of ``lmforge serve`` under load: the server process's resident set size (RSS) after each round of
concurrent clients, to show that it levels off instead of growing with the number of requests served.

The server runs in a child process (``serve_load.py``'s, over the same random-weight decoder of the tiny
demo's shape unless ``--model`` is given), bound to 127.0.0.1 on an ephemeral port. Each round, ``--clients``
clients each send ``--requests`` requests, alternating streaming ``/v1/completions`` and non-streaming
``/v1/chat/completions`` (a random prompt of 8-24 words, ``--max_tokens`` new tokens, temperature 0.8, a
seed of their own); then the bench waits until the server is idle and reads the child's ``VmRSS`` and
``VmHWM`` (peak) from ``/proc/PID/status``. Printed per round: requests, errors, seconds, RSS, its change
from the previous round and from round 1, and the peak; then the growth over the last half of the rounds
(steady state: should be near zero; the first rounds warm up caches, the allocator and torch's kernels).

``--env KEY=VALUE`` (repeatable) sets a variable in the server's environment only, to compare allocator
settings (e.g. ``MALLOC_ARENA_MAX=2``, ``MALLOC_MMAP_THRESHOLD_=131072``). Linux only (``/proc``).

    python bench/serve_memory.py [--rounds 10] [--clients 32] [--requests 2] [--max_tokens 16] [--model CKPT]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

# isort: off
import lmforge  # noqa: F401  (first: sets OpenMP's passive wait policy before torch loads it)

# isort: on
from serve_load import (  # the load bench's model and words (bench/ is on sys.path)
    WORDS,
    build_checkpoint,
    served,
)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def client(url: str, seed: int, requests: int, max_tokens: int, errors: list[str]) -> None:
    import httpx

    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as http:
        for i in range(requests):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))
            common = {
                "model": "bench",
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": rng.randrange(2**31),
            }
            try:
                if i % 2 == 0:
                    body = {**common, "prompt": prompt, "stream": True}
                    async with http.stream("POST", url + "/v1/completions", json=body) as r:
                        if r.status_code != 200:
                            errors.append(f"HTTP {r.status_code}")
                        async for _ in r.aiter_lines():
                            pass
                else:
                    body = {**common, "messages": [{"role": "user", "content": prompt}]}
                    r = await http.post(url + "/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except Exception as e:  # counted, not fatal
                errors.append(f"{type(e).__name__}: {e}")


async def one_round(url: str, rnd: int, clients: int, requests: int, max_tokens: int) -> list[str]:
    errors: list[str] = []
    await asyncio.gather(
        *(client(url, 10_000 * rnd + i, requests, max_tokens, errors) for i in range(clients))
    )
    return errors


def wait_idle(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(url + "/health").json()
        if health["in_flight"] == 0 and health["running_rows"] == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server did not go idle: {health}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="rounds of concurrent clients")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients per round")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--max_tokens", type=int, default=16, help="new tokens per request")
    ap.add_argument(
        "--model", default="", help="checkpoint to serve (default: a random tiny-demo-shaped one)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the server (0 = default)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE in the server's environment")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.model or str(build_checkpoint(Path(tmp)))
        extra = dict(kv.split("=", 1) for kv in args.env)
        with served(ckpt, args.threads, 32, extra) as (child, url):
            start_rss, _ = rss_mb(child.pid)
            print(
                f"server: {ckpt}, pid {child.pid}, {url}; {args.clients} clients x {args.requests} requests "
                f"per round, {args.max_tokens} new tokens; env {extra or 'as is'}; "
                f"RSS at start {start_rss:.0f} MB; load {os.getloadavg()}"
            )
            print(
                f"{'round':>5} {'requests':>8} {'errors':>6} {'seconds':>7} {'RSS MB':>7} {'delta':>6} {'vs r1':>6} {'peak':>6}"
            )
            rss: list[float] = []
            for rnd in range(1, args.rounds + 1):
                t0 = time.monotonic()
                errors = asyncio.run(one_round(url, rnd, args.clients, args.requests, args.max_tokens))
                wait_idle(url)
                now, peak = rss_mb(child.pid)
                delta = now - rss[-1] if rss else now - start_rss
                rss.append(now)
                print(
                    f"{rnd:>5} {args.clients * args.requests:>8} {len(errors):>6} {time.monotonic() - t0:>7.1f} "
                    f"{now:>7.0f} {delta:>+6.0f} {now - rss[0]:>+6.0f} {peak:>6.0f}",
                    flush=True,
                )
                for e in sorted(set(errors))[:3]:
                    print(f"      error: {e}")
            half = rss[len(rss) // 2 :]
            print(
                f"RSS growth over the last {len(half)} rounds: {half[-1] - half[0]:+.0f} MB "
                f"({(half[-1] - half[0]) / max(1, len(half) - 1):+.1f} MB per round); total since start "
                f"{rss[-1] - start_rss:+.0f} MB; load average after: {os.getloadavg()}"
            )


if __name__ == "__main__":
    main()
