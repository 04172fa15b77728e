"""Generation throughput: lmforge's engine vs Hugging Face ``LlamaForCausalLM.generate`` on the same weights.

For a ~12M and a ~50M Llama-shaped decoder (random weights; vocab 4096, context 512), the weights are
copied into ``LlamaForCausalLM`` (``model/hf_names.py``) and both run, interleaved round by round in the
same process so background load hits both alike:

- prefill tokens/s: one forward pass over 8 prompts of 128 tokens, filling the KV cache;
- decode tokens/s at batch 1 and batch 8: greedy generation of 128 new tokens after a 16-token prompt
  (new tokens / wall time; the short prefill is included), at 1 and at all torch threads.

Printed: the median over rounds of each implementation's tokens/s, the median of the per-round ratios
ours / HF (each round times both back to back, so a round's ratio sees one machine state; who goes
first alternates), the same ratio of CPU time consumed (steadier than wall time when other processes
take turns on the cores), whether greedy outputs agree token for token, and the load average.
``--int8`` adds the engine with ``weights="int8"`` (weight-only int8 matmuls; not exact) as a third peer. The machine is shared: trust the ratio,
not the absolute figures. Goal (issue 8): ≥ 2× HF decode tokens/s.

    python bench/generate_bench.py [--rounds 5] [--new 128] [--sizes 12M,50M] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# isort: off
import lmforge  # noqa: F401  (first: sets OpenMP's passive wait policy before torch loads it)
import torch

# isort: on

SIZES = {
    "12M": {"n_layer": 6, "n_embd": 384, "n_head": 6},
    "50M": {"n_layer": 10, "n_embd": 640, "n_head": 10},
}


def build(size: str):
    from transformers import LlamaForCausalLM

    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder
    from lmforge.model.hf_names import to_hf_state_dict, to_llama_config

    cfg = ModelConfig(vocab_size=4096, block_size=512, **SIZES[size])
    torch.manual_seed(0)
    ours = Decoder(cfg).eval()
    with torch.no_grad():
        ours.tok_emb.weight.mul_(10)  # less flat logits, so greedy has clear winners in both
    hf = LlamaForCausalLM(to_llama_config(cfg)).eval()
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=False)
    hf.tie_weights()
    return ours, hf


def timed(fn, *args):
    """``(wall seconds, CPU seconds of this process, result)`` of ``fn(*args)``."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu, out


@torch.no_grad()
def run_ours(model, prompts: torch.Tensor, new: int, weights: str = "exact") -> list[list[int]]:
    from lmforge.inference.engine import Engine, SamplingParams

    params = SamplingParams(max_new_tokens=new, temperature=0)
    return [c.ids for c in Engine(model, weights=weights).generate(prompts.tolist(), params)]


@torch.no_grad()
def run_int8(model, prompts: torch.Tensor, new: int) -> list[list[int]]:
    return run_ours(model, prompts, new, "int8")


@torch.no_grad()
def run_hf(model, prompts: torch.Tensor, new: int) -> list[list[int]]:
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=2,
        eos_token_id=None,
    )
    return out[:, prompts.shape[1] :].tolist()


@torch.no_grad()
def prefill_ours(model, prompts: torch.Tensor) -> None:
    from lmforge.inference.batch_forward import RaggedForward

    fwd = RaggedForward(model)
    fwd.refresh()
    fwd(prompts, fwd.new_cache(torch.zeros(len(prompts), dtype=torch.long), prompts.shape[1]), last_only=True)


@torch.no_grad()
def prefill_hf(model, prompts: torch.Tensor) -> None:
    model(prompts, use_cache=True, logits_to_keep=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--sizes", default="12M,50M")
    ap.add_argument("--threads", default="", help="comma-separated decode thread counts (default 1 and all)")
    ap.add_argument("--int8", action="store_true", help="also time the engine with weights='int8'")
    ap.add_argument(
        "--cases", default="", help="only cases whose name contains one of these (comma-separated)"
    )
    args = ap.parse_args()
    all_threads = torch.get_num_threads()
    thread_counts = sorted({int(t) for t in args.threads.split(",")} if args.threads else {1, all_threads})
    print(f"torch {torch.__version__}, {all_threads} threads available, load {os.getloadavg()[0]:.2f}")
    gen = torch.Generator().manual_seed(0)
    for size in args.sizes.split(","):
        ours, hf = build(size)
        n = sum(p.numel() for p in ours.parameters())
        print(f"\n== {size} model: {n / 1e6:.1f}M parameters ==")
        long = torch.randint(10, 4096, (8, 128), generator=gen)
        cases = [("prefill b8x128", None, long, all_threads)]
        for batch in (1, 8):
            short = torch.randint(10, 4096, (batch, 16), generator=gen)
            for threads in thread_counts:
                cases.append((f"decode b{batch} t{threads}", batch, short, threads))
        if args.cases:
            cases = [c for c in cases if any(w in c[0] for w in args.cases.split(","))]
        for name, batch, prompts, threads in cases:
            torch.set_num_threads(threads)
            runs = [("ours", prefill_ours, ours), ("hf", prefill_hf, hf)]
            if batch is not None:
                runs = [("ours", run_ours, ours), ("hf", run_hf, hf)]
                if args.int8:
                    runs.append(("int8", run_int8, ours))
            times: dict[str, list[float]] = {who: [] for who, _, _ in runs}
            cpus: dict[str, list[float]] = {who: [] for who, _, _ in runs}
            outs = {}
            extra = () if batch is None else (args.new,)
            for _who, fn, model in runs:  # warm-up (allocator, lazily built weights), not timed
                fn(model, prompts, *extra)
            for r in range(args.rounds):
                for who, fn, model in runs if r % 2 == 0 else runs[::-1]:  # alternate who goes first
                    t, c, outs[who] = timed(fn, model, prompts, *extra)
                    times[who].append(t)
                    cpus[who].append(c)
            tokens = prompts.numel() if batch is None else batch * args.new
            hf_tps = tokens / statistics.median(times["hf"])
            for who in [w for w, _, _ in runs if w != "hf"]:
                ratios = [h / o for o, h in zip(times[who], times["hf"])]
                cpu_ratio = statistics.median(h / o for o, h in zip(cpus[who], cpus["hf"]))
                agree = ""
                if batch is not None:
                    same = sum(a == b for ra, rb in zip(outs[who], outs["hf"]) for a, b in zip(ra, rb))
                    agree = f" | greedy tokens agree {same}/{tokens}"
                label = name if who == "ours" else f"{name} int8"
                print(
                    f"{label:<23} ours {tokens / statistics.median(times[who]):8.0f} tok/s | "
                    f"HF {hf_tps:8.0f} tok/s | ratio {statistics.median(ratios):5.2f}x "
                    f"(rounds {min(ratios):.2f}-{max(ratios):.2f}; CPU time {cpu_ratio:.2f}x){agree} | "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        torch.set_num_threads(all_threads)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
