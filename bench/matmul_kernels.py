"""Small-row fp32 matmul kernels on this CPU: why cached decoding (``model/decode_weights.py``) does not use ``F.linear`` to decode.

For the weight matrices of the ~12M and ~50M decoders of ``generate_bench.py`` (every projection and
``lm_head``), one pass over all of them — what a decode step reads — with 1 .. 40 input rows (a
decode step's batch × new tokens) and 1024 (a prefill), through:

- ``F.linear(x, w)`` (what HF and ``nn.Linear`` call);
- ``(w @ x.T).T`` over a row-contiguous ``x``, one row doubled (``decode_weights._few_rows``);
- oneDNN's prepacked linear (``torch.ops.mkldnn._linear_pointwise`` over weights packed for 8 rows).

Printed: milliseconds per pass (best of ``--repeat``) and the rate the weights are read at. One thread.

    python bench/matmul_kernels.py [--sizes 12M,50M] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

# isort: off
import lmforge  # noqa: F401  (first: sets OpenMP's passive wait policy before torch loads it)
import torch
import torch.nn.functional as F

# isort: on

ROWS = (1, 2, 3, 4, 8, 16, 40, 1024)


def weights(size: str) -> list[torch.Tensor]:
    from generate_bench import SIZES

    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder

    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=4096, block_size=512, **SIZES[size]))
    ws = [p.detach().contiguous() for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n]
    return [*ws, model.lm_head.weight.detach().contiguous()]


def kernel_table(ws: list[torch.Tensor], packed: list[torch.Tensor]) -> dict:
    """name -> one pass over ``ws`` for inputs ``xs`` (by input width)."""
    from lmforge.model.decode_weights import _few_rows

    kernels = {
        "F.linear": lambda xs: [F.linear(xs[w.shape[1]], w) for w in ws],
        "(w @ x.T).T": lambda xs: [_few_rows(w, xs[w.shape[1]]) for w in ws],
    }
    if packed:
        kernels["oneDNN packed"] = lambda xs: [
            torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")
            for w, p in zip(ws, packed)
        ]
    return kernels


def best_ms(fn, xs: dict[int, torch.Tensor], repeat: int) -> float:
    fn(xs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(xs)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    from lmforge.model.decode_weights import PACK_ROWS, _onednn_linear

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="12M,50M")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, oneDNN linear: {_onednn_linear()}")
    for size in args.sizes.split(","):
        ws = weights(size)
        mb = sum(w.numel() for w in ws) * 4 / 1e6
        packed = (
            [torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS) for w in ws] if _onednn_linear() else []
        )
        kernels = kernel_table(ws, packed)
        print(f"\n== {size}: {len(ws)} matrices, {mb:.0f} MB of fp32 weights; ms per pass (GB/s) ==")
        print(f"{'rows':>5} " + " ".join(f"{k:>20}" for k in kernels))
        for rows in ROWS:
            xs = {d: torch.randn(rows, d) for d in {w.shape[1] for w in ws}}
            cells = []
            for name, fn in kernels.items():
                if name == "(w @ x.T).T" and rows > 8:
                    cells.append(f"{'':>20}")
                    continue
                ms = best_ms(fn, xs, args.repeat)
                cells.append(f"{ms:9.1f} ({mb / ms:5.1f} GB/s)")
            print(f"{rows:>5} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
