"""Training throughput: lmforge's Decoder vs Hugging Face ``LlamaForCausalLM`` of the same shape.

Forward + backward + AdamW step, fp32, on this machine, in the same run (interleaved rounds, so
background load hits both alike). Printed: the best round of each (the machine at its quietest) and the
median of the per-round ratios (what a loaded machine gives), with the load average before and after.
Default shape (issue 5): vocab 4096, 6 layers, d 384, 6 heads, context 256, batch 8, SwiGLU hidden 1024,
tied embeddings, RoPE, RMSNorm. Goal: ≥ 1.5× HF's tokens/s on a 2-core CPU.

    python bench/pretrain_throughput.py [--rounds 5] [--steps 4] [--compile] [--compile-hf] [--bf16]

``--compile`` / ``--compile-hf`` wrap our model / HF's in ``torch.compile`` (the first step's time,
compilation included, is printed); ``--bf16`` runs both under CPU bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

# isort: off
import lmforge  # noqa: F401  (first: sets OpenMP's passive wait policy before torch loads it)
import torch

# isort: on


def lmforge_model(args):
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder

    cfg = ModelConfig(
        vocab_size=args.vocab,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.d,
        block_size=args.ctx,
        mlp_hidden=args.hidden,
    )
    return Decoder(cfg)


def hf_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d,
        intermediate_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.ctx,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
    )
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    return model


def make_step(model, kind, x, y, compile_model, bf16=False):
    from lmforge.training.optim import build_optimizer
    from lmforge.training.step import token_loss

    opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    fwd = torch.compile(model) if compile_model else model

    def step():
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            logits = fwd(x) if kind == "lmforge" else fwd(input_ids=x).logits
            loss, n = token_loss(logits, y)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--compile-hf", action="store_true", help="torch.compile HF's model")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for both models")
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.ctx))
    y = torch.randint(0, args.vocab, (args.batch, args.ctx))
    ours, hf = lmforge_model(args), hf_model(args)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    steps = {
        "lmforge": make_step(ours, "lmforge", x, y, args.compile, args.bf16),
        "hf": make_step(hf, "hf", x, y, args.compile_hf, args.bf16),
    }
    load_before = os.getloadavg()[0]
    first = {}
    for name, fn in steps.items():  # warm-up (and compile)
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
        fn()
    rounds = {k: [] for k in steps}  # tokens/s of each round
    for _ in range(args.rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            rounds[name].append(args.steps * args.batch * args.ctx / (time.perf_counter() - t0))
    best = {k: max(v) for k, v in rounds.items()}
    median_ratio = statistics.median(a / b for a, b in zip(rounds["lmforge"], rounds["hf"]))
    from lmforge.training.flops import matmul_peak

    peak = matmul_peak("cpu", "fp32")
    fpt = ours.flops_per_token()
    print(
        f"threads {torch.get_num_threads()}, params lmforge {n_ours / 1e6:.2f}M / hf {n_hf / 1e6:.2f}M, "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s, {'bf16 autocast' if args.bf16 else 'fp32'}, "
        f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    for name, tps in best.items():
        compiled = args.compile if name == "lmforge" else args.compile_hf
        print(
            f"{name:8s} {tps:8.0f} tokens/s  MFU {tps * fpt / peak:.1%}  "
            f"(first step {first[name]:.1f} s{', compiled' if compiled else ''})"
        )
    print(
        f"ratio lmforge/hf: {best['lmforge'] / best['hf']:.2f}x best rounds, "
        f"{median_ratio:.2f}x median of {args.rounds} interleaved rounds (goal >= 1.5x)"
    )


if __name__ == "__main__":
    main()
