"""Time-to-quality on text the recipe was never tuned on: lmforge's shakespeare recipe vs nanoGPT's CPU recipe.

Issue 24, item 5: `recipes/shakespeare-cpu.yaml` with its corpus swapped for another ~1 MB English text,
beside nanoGPT's README CPU recipe (`bench/nanogpt_peer.py`, a port) on the same text and split, each with
the same wall-clock budget of training (130 s), both scored in bits per byte on the same held-out bytes.
The text: WikiText-2's test file (`../shared/data/wikitext-2-tokenized/test.txt`, 1.26 MB of Wikipedia
articles, word-tokenised with `<unk>` for rare words), split as tinyshakespeare is: the first 90% of its
characters train (1.13 MB), the last 10% (126 KB) are held out. lmforge: the recipe unchanged but
`data.input` (BPE tokenizer trained on the new training text, every `auto` measured on this machine),
scored on disjoint 64-token windows (`val_bpb`); nanoGPT: characters, scored on disjoint 64-character
windows. Goal: lmforge >= 20% lower bits per byte.

Each peer is one command, so each can hold the benchmark lock alone; the comparison is printed once
both results are in `--out`:

    flock /work/bench.lock python bench/heldout_text.py --peer nanogpt --out DIR
    flock /work/bench.lock python bench/heldout_text.py --peer lmforge --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from shakespeare import describe_choices, sample_load  # bench/ is on the path when a script of it runs

# OpenMP threads that spin between parallel regions lose most of their time when other jobs share the
# cores (docs/performance.md, "Threads and a shared machine"); `import lmforge` makes them wait
# passively, and the nanoGPT peer, which imports no lmforge, gets the same setting, before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "shakespeare-cpu.yaml"
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-tokenized" / "test.txt"
BUDGET_S = 130.0
VAL_FRACTION = 0.1  # the recipe's split: split: tail, val_fraction: 0.1


def run_nanogpt(text: str, budget: float) -> dict:
    """Train the nanoGPT peer on the first 90% of ``text``'s characters; score the rest."""
    import torch
    from nanogpt_peer import score, train

    chars = sorted(set(text))  # prepare.py: every character of the whole text
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    cut = int(len(text) * (1 - VAL_FRACTION))
    model, stats = train(ids[:cut], len(chars), budget)
    char_bytes = torch.tensor([len(c.encode()) for c in chars])
    return {**stats, "val_bpb": score(model, ids[cut:], char_bytes), "vocab": len(chars)}


def run_lmforge(text_path: Path, budget: float, out: Path) -> dict:
    """Run the shakespeare recipe cold on ``text_path``; its pretrain metrics."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "run",
            str(RECIPE),
            "--out",
            str(out),
            "-q",
            f"data.input={text_path}",
            f"pretrain.max_time_s={budget}",
        ],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.DEVNULL,
    )
    manifest = json.loads((out / "pretrain" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    return {
        "choices": describe_choices(metrics, manifest["config"]),
        "iters": metrics["steps"],
        "train_s": metrics["train_time_s"],
        "train_loss": metrics["train_loss"],
        "val_bpb": metrics["val_bpb"],
        **{
            k: metrics[k]
            for k in ("val_bpb_sliding", "procs", "threads", "optimizer_muon", "dtype_bf16")
            if k in metrics
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=["lmforge", "nanogpt", "both"], default="both")
    parser.add_argument("--out", type=Path, required=True, help="results directory (both peers write here)")
    parser.add_argument("--text", type=Path, default=TEXT, help="a ~1 MB English text file")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds of training per peer")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text = args.text.read_text(encoding="utf-8")
    peers = ["nanogpt", "lmforge"] if args.peer == "both" else [args.peer]
    for peer in peers:
        load_before, samples, stop = os.getloadavg(), [], threading.Event()
        threading.Thread(target=sample_load, args=(samples, stop), daemon=True).start()
        t0 = time.perf_counter()
        if peer == "nanogpt":
            result = run_nanogpt(text, args.budget)
        else:
            result = run_lmforge(args.text.resolve(), args.budget, args.out / "lmforge-run")
        stop.set()
        result.update(
            wall_s=time.perf_counter() - t0,
            load_before=load_before[0],
            load_mean=sum(samples) / max(len(samples), 1),
            load_max=max(samples, default=load_before[0]),
            when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        )
        (args.out / f"{peer}.json").write_text(json.dumps(result, indent=1))
        print(f"{peer}: {json.dumps(result)}")
    results = {
        p: json.loads((args.out / f"{p}.json").read_text())
        for p in ("nanogpt", "lmforge")
        if (args.out / f"{p}.json").exists()
    }
    if len(results) < 2:
        return
    cut = int(len(text) * (1 - VAL_FRACTION))
    print(
        f"{args.text.name}: {len(text[:cut].encode()):,} training bytes, {len(text[cut:].encode()):,} held-out "
        f"bytes; {args.budget:.0f} s of training each; {os.cpu_count()} cores"
    )
    for peer, r in results.items():
        print(
            f"  {peer:8s} {r['val_bpb']:.4f} bits/byte  ({r['iters']} steps; load "
            f"{r['load_before']:.2f} before, mean {r['load_mean']:.2f}, max {r['load_max']:.2f}; {r['when']})"
        )
        if "choices" in r:
            print(f"           {r['choices']}")
    gain = 1 - results["lmforge"]["val_bpb"] / results["nanogpt"]["val_bpb"]
    print(
        f"lmforge is {100 * gain:.1f}% lower than nanoGPT (goal >= 20%): {'met' if gain >= 0.2 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
