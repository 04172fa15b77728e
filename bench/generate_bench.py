"""Generation throughput: lmforge's engine vs Hugging Face ``LlamaForCausalLM.generate`` on the same weights.

For a ~12M and a ~50M Llama-shaped decoder (random weights; vocab 4096, context 512), the weights are
copied into ``LlamaForCausalLM`` (``model/hf_names.py``) and both run, interleaved round by round in the
same process so background load hits both alike:

- prefill tokens/s: one forward pass over 8 prompts of 128 tokens, filling the KV cache;
- decode tokens/s at batch 1 and batch 8: greedy generation of 128 new tokens after a 16-token prompt
  (new tokens / wall time; the short prefill is included), at 1 and at all torch threads.

Printed: the best round of each (the machine at its quietest), the ratio ours / HF, whether greedy
outputs agree token for token, and the load average. Goal (issue 8): ≥ 2× HF decode tokens/s.

    python bench/generate_bench.py [--rounds 3] [--new 128] [--sizes 12M,50M]
"""

from __future__ import annotations

import argparse
import os
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
    """``(seconds, result)`` of ``fn(*args)``."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


@torch.no_grad()
def run_ours(model, prompts: torch.Tensor, new: int) -> list[list[int]]:
    from lmforge.inference.engine import Engine, SamplingParams

    params = SamplingParams(max_new_tokens=new, temperature=0)
    return [c.ids for c in Engine(model).generate(prompts.tolist(), params)]


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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--sizes", default="12M,50M")
    args = ap.parse_args()
    all_threads = torch.get_num_threads()
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
            for threads in sorted({1, all_threads}):
                cases.append((f"decode b{batch} t{threads}", batch, short, threads))
        for name, batch, prompts, threads in cases:
            torch.set_num_threads(threads)
            best = {"ours": float("inf"), "hf": float("inf")}
            outs = {}
            runs = (("ours", prefill_ours, ours), ("hf", prefill_hf, hf))
            if batch is not None:
                runs = (("ours", run_ours, ours), ("hf", run_hf, hf))
            for _ in range(args.rounds):
                for who, fn, model in runs:
                    extra = () if batch is None else (args.new,)
                    t, outs[who] = timed(fn, model, prompts, *extra)
                    best[who] = min(best[who], t)
            tokens = prompts.numel() if batch is None else batch * args.new
            ours_tps, hf_tps = tokens / best["ours"], tokens / best["hf"]
            agree = ""
            if batch is not None:
                same = sum(a == b for ra, rb in zip(outs["ours"], outs["hf"]) for a, b in zip(ra, rb))
                agree = f" | greedy tokens agree {same}/{tokens}"
            print(
                f"{name:<18} ours {ours_tps:9.0f} tok/s | HF {hf_tps:9.0f} tok/s | {ours_tps / hf_tps:5.2f}x{agree}"
            )
        torch.set_num_threads(all_threads)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
