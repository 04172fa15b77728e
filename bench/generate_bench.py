"""Generation throughput: lmforge's engine vs Hugging Face ``LlamaForCausalLM.generate`` on the same weights.

For a ~12M and a ~50M Llama-shaped decoder (random weights; vocab 4096, context 512), the weights are
copied into ``LlamaForCausalLM`` (``model/hf_names.py``) and both run, interleaved round by round in the
same process so background load hits both alike:

- prefill tokens/s: one forward pass over 8 prompts of 128 tokens, filling the KV cache;
- decode tokens/s at batch 1 and batch 8: greedy generation of 128 new tokens after a 16-token prompt
  (new tokens / wall time; the short prefill is included). By default the rows say ``auto``: the engine
  decodes on the thread count it measures to be faster here (``inference/probe.py``, printed as
  ``ours tN``) and HF ``generate`` runs on torch's default (all cores): each as a user gets it. When the
  engine chose fewer threads, HF is also timed on the engine's count (``HF@tN``), so no peer is slowed by
  a setting the other avoids. ``--threads 1,2`` adds rows with a hand-chosen count for both.

Printed: the median over rounds of each implementation's tokens/s, the median of the per-round ratios
ours / HF (each round times both back to back, so a round's ratio sees one machine state; who goes
first alternates), the same ratio of CPU time consumed (steadier than wall time when other processes
take turns on the cores), whether greedy outputs agree token for token, how much longer the untimed
first call took (the engine is built once per model and reused, as a server or chat holds one; its
setup — the thread probe, fused and packed weights — lands in that first call), and the load average.
Decode rows add the bandwidth: bytes of weights a decode step reads (every matrix once; the KV cache
left out), divided by the time per decode step (prefill included, so a lower bound), for the engine and
for HF, beside this machine's memory bandwidth measured by ``probe.memory_bandwidth`` (a large copy,
read + write bytes) at the engine's thread count: the distance to the physical limit.
The process runs as ``lmforge generate`` and ``lmforge chat`` do: OpenMP threads spin between parallel
regions (``runtime.spin_for_decoding``; both peers share the process, so both get it).
``--int8`` adds the engine with ``weights="int8"`` (weight-only int8 matmuls; not exact) as a third peer. The machine is shared: trust the ratio,
not the absolute figures. Goal (issues 8, 24): ≥ 2× HF decode tokens/s in the default setting.

``--trained DIR`` measures speculative decoding (``Engine(draft=...)``), whose speed-up depends on how
predictable the text is, so random weights would say nothing: it trains once (cached in DIR through
the run store) the 12M shape (6 layers, d 384, BPE 4096, context 256) and a draft model (2 layers,
d 128) on tinyshakespeare's first 90% with the ``data`` / ``tokenizer`` / ``pretrain`` stages, then
decodes greedily from 8 prompts cut from the last 10% (the validation text), one at a time (batch 1)
and as one batch of 8, against
HF ``generate`` on the same weights: plain engine, ``draft="ngram"`` and the draft model, each
printing tok/s, the ratio to HF, tokens per target pass, acceptance, and whether the tokens equal
HF's and the plain engine's. Skips when ../shared/data is absent.

    python bench/generate_bench.py [--rounds 5] [--new 128] [--sizes 12M,50M] [--threads 1,2] [--int8]
    nice -n 10 python bench/generate_bench.py --trained runs/spec-bench [--draft-tokens 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# isort: off
import lmforge  # noqa: F401  (first: sets OpenMP's passive wait policy before torch loads it)
from lmforge.runtime import spin_for_decoding

spin_for_decoding()  # as `lmforge generate` and `lmforge chat` run: OpenMP threads spin between regions
import torch  # noqa: E402

# isort: on

SIZES = {
    "12M": {"n_layer": 6, "n_embd": 384, "n_head": 6},
    "50M": {"n_layer": 10, "n_embd": 640, "n_head": 10},
}


def build(size: str):
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder

    cfg = ModelConfig(vocab_size=4096, block_size=512, **SIZES[size])
    torch.manual_seed(0)
    ours = Decoder(cfg).eval()
    with torch.no_grad():
        ours.tok_emb.weight.mul_(10)  # less flat logits, so greedy has clear winners in both
    return ours, to_hf(ours)


def to_hf(ours):
    """``LlamaForCausalLM`` (SDPA attention) holding ``ours``'s weights."""
    from transformers import LlamaForCausalLM

    from lmforge.model.hf_names import to_hf_state_dict, to_llama_config

    cfg = ours.config
    hf = LlamaForCausalLM(to_llama_config(cfg)).eval()
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=False)
    hf.tie_weights()
    return hf


def timed(fn, *args):
    """``(wall seconds, CPU seconds of this process, result)`` of ``fn(*args)``."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu, out


ENGINES: dict = {}


def engine(model, weights: str = "exact", threads: int | str = "auto"):
    """One engine per model, weight format and thread setting, built once and reused, as ``lmforge
    serve``, ``chat`` and ``generate`` hold one: its one-time setup (the thread probe, fusing weights,
    and oneDNN's packing on a weight's second multi-row call) falls in the untimed warm-up call, whose
    extra time is printed ("first call")."""
    from lmforge.inference.engine import Engine

    key = (id(model), weights, threads)
    if key not in ENGINES:
        ENGINES[key] = Engine(model, weights=weights, threads=threads)
    return ENGINES[key]


def peer(weights: str, threads: int | str):
    """The engine as a benchmark peer: ``fn(model, prompts, new)`` -> greedy ids per row."""

    @torch.no_grad()
    def run(model, prompts: torch.Tensor, new: int) -> list[list[int]]:
        from lmforge.inference.rows import SamplingParams

        params = SamplingParams(max_new_tokens=new, temperature=0)
        return [c.ids for c in engine(model, weights, threads).generate(prompts.tolist(), params)]

    return run


def hf_on(threads: int):
    """HF ``generate`` on ``threads`` torch threads (the count is put back afterwards)."""

    def run(model, prompts: torch.Tensor, new: int) -> list[list[int]]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run_hf(model, prompts, new)
        finally:
            torch.set_num_threads(before)

    return run


def weight_bytes(weights) -> int:
    """Bytes of weights one decode step reads with the engine's prepared ``weights`` (DecodeWeights):
    every matrix once (fp32, or int8 plus its scales); norms' gains and the embedding rows left out."""

    def size(m) -> int:
        w = m.w if m.w8 is None else m.w8
        return w.numel() * w.element_size() + (
            0 if m.scale is None else m.scale.numel() * m.scale.element_size()
        )

    mats = [m for lw in weights.layers for m in (lw.qkv, lw.o, lw.gate_up, lw.down) if m is not None]
    return sum(size(m) for m in [*mats, weights.head])


@torch.no_grad()
def run_hf(model, prompts: torch.Tensor, new: int, **extra) -> list[list[int]]:
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=2,
        eos_token_id=None,
        **({"do_sample": False} | extra),
    )
    return out[:, prompts.shape[1] :].tolist()


@torch.no_grad()
def prefill_ours(model, prompts: torch.Tensor) -> None:
    weights = engine(model, "exact", torch.get_num_threads()).weights.refresh()
    model(prompts, model.new_kv_cache(len(prompts), prompts.shape[1]), weights=weights, last_only=True)


@torch.no_grad()
def prefill_hf(model, prompts: torch.Tensor) -> None:
    model(prompts, use_cache=True, logits_to_keep=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--sizes", default="12M,50M")
    ap.add_argument(
        "--threads",
        default="",
        help="comma-separated hand-chosen decode thread counts, rows beside the auto ones (default none)",
    )
    ap.add_argument("--int8", action="store_true", help="also time the engine with weights='int8'")
    ap.add_argument(
        "--cases", default="", help="only cases whose name contains one of these (comma-separated)"
    )
    ap.add_argument(
        "--trained", type=Path, default=None, help="speculative decoding on trained models in DIR"
    )
    ap.add_argument("--draft-tokens", default="4", help="--trained: draft tokens per pass (comma-separated)")
    ap.add_argument("--retrain", action="store_true", help="--trained: run the training recipe again")
    ap.add_argument("--temperature", type=float, default=0.0, help="--trained: 0 = greedy, else sample")
    ap.add_argument("--train-s", default="300,120", help="--trained: training seconds of target,draft")
    args = ap.parse_args()
    if args.trained is not None:
        return trained_main(args)
    all_threads = torch.get_num_threads()
    thread_counts = sorted({int(t) for t in args.threads.split(",")} if args.threads else set())
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
            for threads in ["auto", *thread_counts]:
                cases.append(
                    (f"decode b{batch} {'' if threads == 'auto' else 't'}{threads}", batch, short, threads)
                )
        if args.cases:
            cases = [c for c in cases if any(w in c[0] for w in args.cases.split(","))]
        for case in cases:
            run_case(args, ours, hf, *case)
        torch.set_num_threads(all_threads)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


def run_case(args, ours, hf, name: str, batch: int | None, prompts: torch.Tensor, threads: int | str) -> None:
    """Time one case (module docstring) round by round and print its rows."""
    from lmforge.inference.probe import memory_bandwidth

    all_threads = torch.get_num_threads()
    torch.set_num_threads(all_threads if threads == "auto" else threads)
    runs = [("ours", prefill_ours, ours), ("hf", prefill_hf, hf)]
    if batch is not None:
        runs = [("ours", peer("exact", threads), ours), ("hf", run_hf, hf)]
        if args.int8:
            runs.append(("int8", peer("int8", threads), ours))
    extra = () if batch is None else (args.new,)
    first = {}
    for who, fn, model in runs:  # warm-up (allocator, the engine's setup), not timed
        first[who] = timed(fn, model, prompts, *extra)[0]
    chosen = engine(ours, "exact", threads).stats.threads if batch is not None else all_threads
    if threads == "auto" and chosen != all_threads:  # HF also on the engine's count
        runs.append((f"HF@t{chosen}", hf_on(chosen), hf))
        first[runs[-1][0]] = timed(runs[-1][1], hf, prompts, *extra)[0]
    times: dict[str, list[float]] = {who: [] for who, _, _ in runs}
    cpus: dict[str, list[float]] = {who: [] for who, _, _ in runs}
    outs = {}
    for r in range(args.rounds):
        for who, fn, model in runs if r % 2 == 0 else runs[::-1]:  # alternate who goes first
            t, c, outs[who] = timed(fn, model, prompts, *extra)
            times[who].append(t)
            cpus[who].append(c)
    tokens = prompts.numel() if batch is None else batch * args.new
    hfs = [w for w, _, _ in runs if w.startswith("HF") or w == "hf"]
    hf_label = f"HF t{all_threads if threads == 'auto' else threads}"
    for who in [w for w, _, _ in runs if w not in hfs]:
        vs = []
        for h in hfs:
            ratios = [b / a for a, b in zip(times[who], times[h])]
            cpu_ratio = statistics.median(b / a for a, b in zip(cpus[who], cpus[h]))
            label = hf_label if h == "hf" else h
            vs.append(
                f"{label} {tokens / statistics.median(times[h]):6.0f} tok/s: {statistics.median(ratios):4.2f}x "
                f"(rounds {min(ratios):.2f}-{max(ratios):.2f}, CPU {cpu_ratio:.2f}x)"
            )
        agree = ""
        if batch is not None:
            same = sum(a == b for ra, rb in zip(outs[who], outs["hf"]) for a, b in zip(ra, rb))
            agree = f" | greedy = HF {same}/{tokens}"
        label = name if who == "ours" else f"{name} int8"
        setup = first[who] - statistics.median(times[who])  # the first call's extra time
        print(
            f"{label:<20} ours t{chosen} {tokens / statistics.median(times[who]):6.0f} tok/s | "
            + " | ".join(vs)
            + f"{agree} | first call +{1e3 * setup:.0f} ms | load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        if batch is not None:  # bytes of weights per decode step / time per step (prefill included)
            step = {w: statistics.median(times[w]) / args.new for w in (who, *hfs)}
            weights = engine(ours, "exact" if who == "ours" else "int8", threads).weights
            ours_bytes, hf_bytes = weight_bytes(weights), weight_bytes(engine(ours, "exact", threads).weights)
            peak = memory_bandwidth(chosen, remeasure=True)
            print(
                f"{'':<20} bandwidth: {ours_bytes / 1e6:.0f} MB of weights per step, ours "
                f"{ours_bytes / step[who] / 1e9:.1f} GB/s, "
                + ", ".join(
                    f"{hf_label if h == 'hf' else h} {hf_bytes / step[h] / 1e9:.1f} GB/s" for h in hfs
                )
                + f"; memory (copy probe, {chosen} thread{'s' if chosen > 1 else ''}) {peak:.1f} GB/s: "
                f"ours at {ours_bytes / step[who] / 1e9 / peak:.0%}",
                flush=True,
            )
    torch.set_num_threads(all_threads)


ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
RECIPE = ROOT / "recipes" / "shakespeare-cpu.yaml"
TRAINED = {  # pretrain options shared by the target and the draft (after recipes/shakespeare-cpu.yaml)
    "procs": 1,
    "threads": 1,
    "dtype": "bf16",
    "optimizer": "muon",
    "muon_ns_steps": 3,
    "lr": 3.0e-3,
    "beta2": 0.99,
    "warmup_steps": 20,
    "schedule": "linear",
    "schedule_clock": "time",
    "min_lr_ratio": 0.0,
    "weight_decay": 0.5,
    "max_steps": 20000,
    "eval_every": 100000,
    "eval_tokens": 0,
    "ckpt_every": 100000,
    "log_every": 100,
}


def train_models(out: Path, target_s: float, draft_s: float, retrain: bool = False) -> tuple[Path, Path]:
    """Train (or find in ``out``) the 12M target and the draft; return their stage directories."""
    import yaml

    recipe = {
        "name": "spec-bench",
        "stages": {
            # the data stage of the shakespeare recipe: the same split of the same bytes
            "data": {**yaml.safe_load(RECIPE.read_text())["stages"]["data"], "input": [str(SHAKESPEARE)]},
            "tokenizer": {"vocab_size": 4096},
            "pretrain": {
                "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
                "batch_size": 4,  # one thread trains ~1.2k tokens/s here: small batches buy more steps
                "max_time_s": target_s,
                **TRAINED,
            },
            "draft": {
                "stage": "pretrain",
                "model": {"n_layer": 2, "n_head": 2, "n_embd": 128, "block_size": 256},
                "batch_size": 8,
                "max_time_s": draft_s,
                **TRAINED,
            },
        },
    }
    stages = out / "run" / "pretrain", out / "run" / "draft"
    if not retrain and all((d / "manifest.json").exists() for d in stages):
        return stages  # trained once (the run store retrains when a stage version or config field changes)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    subprocess.run(
        [sys.executable, "-m", "lmforge", "run", str(path), "--out", str(out / "run"), "-q"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    return stages


def val_prompts(tok, n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens (``<|bos|>`` + text) cut at even offsets from the last 10% of
    tinyshakespeare (the validation split the models were not trained on)."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    val = tok.encode(text[int(len(text) * 0.9) :], add_special_tokens=False).ids
    step = (len(val) - length) // n
    bos = tok.token_to_id("<|bos|>")
    return [[bos, *val[i * step : i * step + length - 1]] for i in range(n)]


def trained_main(args) -> None:
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import DecodeStats, SamplingParams
    from lmforge.model.checkpoint import load_model, resolve_checkpoint
    from lmforge.tokenizer.train import load_tokenizer

    if not SHAKESPEARE.exists():
        print(f"skipped: {SHAKESPEARE} is absent (the --trained mode trains on tinyshakespeare)")
        return
    torch.set_num_threads(1)
    target_s, draft_s = (float(x) for x in args.train_s.split(","))
    t0 = time.perf_counter()
    target_dir, draft_dir = train_models(args.trained, target_s, draft_s, args.retrain)
    print(f"models ready in {time.perf_counter() - t0:.0f} s (cached after the first run): {args.trained}")
    target, _ = load_model(resolve_checkpoint(target_dir, "best"))
    small, _ = load_model(resolve_checkpoint(draft_dir, "best"))
    target.eval()
    small.eval()
    tok = load_tokenizer(resolve_checkpoint(target_dir, "best") / "tokenizer.json")
    hf = to_hf(target)
    for name, m in (("target", target), ("draft", small)):
        manifest = (target_dir if name == "target" else draft_dir) / "manifest.json"
        metrics = json.loads(manifest.read_text())["metrics"]
        n = sum(p.numel() for p in m.parameters())
        print(
            f"{name}: {n / 1e6:.1f}M parameters, val loss {metrics.get('val_loss', float('nan')):.3f} nats/token"
        )
    print(
        f"torch {torch.__version__}, 1 thread, load {os.getloadavg()[0]:.2f}, {args.new} new tokens per row"
    )
    temp = args.temperature
    params = SamplingParams(max_new_tokens=args.new, temperature=temp, seed=0)
    print("greedy" if temp == 0 else f"sampling at temperature {temp} (no top-k/top-p), seed 0")
    prompts_all = val_prompts(tok, 8, 64)
    ks = [int(k) for k in args.draft_tokens.split(",")]

    def engine_peer(draft, k):
        def run(model, prompts, new):
            engine = Engine(model, draft=draft, draft_tokens=k)
            out, run.stats = [], DecodeStats()
            for batch in prompts:  # batch 1: every prompt on its own; batch 8: one call
                out += [c.ids for c in engine.generate(batch.tolist(), params)]
                for f in ("passes", "tokens", "drafted", "accepted"):
                    setattr(run.stats, f, getattr(run.stats, f) + getattr(engine.stats, f))
            run.stats.passes += len(prompts) - 1  # so that tokens / (passes + 1) counts each prefill
            return out

        return run

    def hf_peer(lookup: int = 0):
        def run(model, prompts, new):
            torch.manual_seed(0)
            extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
            if temp > 0:
                extra.update(do_sample=True, temperature=temp, top_k=0, top_p=1.0)
            return [ids for batch in prompts for ids in run_hf(model, batch, new, **extra)]

        return run

    for batch in (1, 8):  # batch 1 runs the 8 prompts one after another, batch 8 as one batch
        prompts = torch.tensor(prompts_all).split(batch)
        runs = [("hf", hf_peer(), hf), ("plain", engine_peer(None, 1), target)]
        for k in ks:
            runs += [
                (f"ngram k={k}", engine_peer("ngram", k), target),
                (f"draft k={k}", engine_peer(small, k), target),
            ]
            if batch == 1 and temp == 0:  # HF's prompt lookup: batch 1 only
                runs.append((f"HF lookup k={k}", hf_peer(k), hf))
        times: dict[str, list[float]] = {who: [] for who, _, _ in runs}
        outs, stats = {}, {}
        for who, fn, model in runs:  # warm-up, not timed
            outs[who] = fn(model, prompts, args.new)
        for r in range(args.rounds):
            for who, fn, model in runs if r % 2 == 0 else runs[::-1]:
                t, _, outs[who] = timed(fn, model, prompts, args.new)
                times[who].append(t)
                stats[who] = getattr(fn, "stats", None)
        tokens = len(prompts_all) * args.new
        hf_tps = tokens / statistics.median(times["hf"])
        print(f"\n-- batch {batch}: HF generate {hf_tps:.0f} tok/s --")
        for who, _, _ in runs[1:]:
            ratios = [h / o for o, h in zip(times[who], times["hf"])]
            agree = sum(a == b for ra, rb in zip(outs[who], outs["hf"]) for a, b in zip(ra, rb))
            exact = outs[who] == outs["plain"]
            s, spec = stats[who], ""
            if s is not None:  # tokens per row per target pass (the prefill counts as one)
                spec = f"{s.tokens / (s.passes + 1) / batch:4.2f} tok/row/pass, accepted {s.accepted}/{s.drafted}"
            same = f"tokens = HF {agree}/{tokens}, = plain: {exact}" if temp == 0 else "(sampled)"
            print(
                f"{who:<15} {tokens / statistics.median(times[who]):7.0f} tok/s | ratio "
                f"{statistics.median(ratios):5.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}) | {spec:<38} | "
                f"{same} | load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        print("sample (row 0, plain):", repr(tok.decode(outs["plain"][0])[:200]))


if __name__ == "__main__":
    main()
