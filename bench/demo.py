"""Time the default demo: a cold `lmforge run recipes/tiny.yaml` and the fully cached second run.

Targets (issue 2): cold run ≤ 10 minutes on a 2-core CPU; cached re-run ≤ 10 seconds.
Usage: python bench/demo.py [--out DIR]   (default: a fresh temporary directory)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "run",
            str(ROOT / "recipes" / "tiny.yaml"),
            "--out",
            str(out),
            "-q",
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lmforge-demo-")) / "tiny"
    cold = timed_run(out)
    cached = timed_run(out)
    print(f"cold run:   {cold:7.1f} s  (target ≤ 600 s)")
    print(f"cached run: {cached:7.1f} s  (target ≤ 10 s)")
    for stage in json.loads((out / "run.json").read_text())["stages"]:
        m = json.loads((out / stage["instance"] / "manifest.json").read_text())
        print(f"  {stage['instance']:<10} {m['duration_s']:7.1f} s")
    ev = json.loads((out / "eval" / "manifest.json").read_text())["metrics"]
    print(
        f"val loss {ev['val_loss']:.3f} nats/token (unigram baseline {ev['unigram_loss']:.3f}), "
        f"ppl {ev['val_ppl']:.1f}, {ev['val_bpb']:.3f} bits/byte"
    )


if __name__ == "__main__":
    main()
