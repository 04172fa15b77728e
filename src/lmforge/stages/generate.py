"""Sample text from a checkpoint for a list of prompts, as one batch through the generation engine;
writes ``samples.jsonl`` for the report.

``--draft ngram | model`` decodes speculatively (``inference/speculative.py``): drafts from the rows'
earlier text, or from a smaller model (``--draft_model``, a run-store input of this stage) that must
use the target's tokenizer. The samples are those of plain decoding (greedy: token for token);
``draft_acceptance`` and ``tokens_per_pass`` go into the manifest's metrics."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.runstore import TOKENIZER_FILE, StageContext, config_inputs, run_config
from lmforge.stages.decoding import DecodingOptions

log = logging.getLogger(__name__)

STAGE = "generate"
VERSION = 2


@dataclass
class Config(DecodingOptions):
    """Options of ``lmforge generate`` (the decoding options: ``stages/decoding.py``)."""

    out: str = opt(
        "", "output stage directory (none: print the samples to the terminal, write nothing)", path=True
    )
    prompts: list[str] = opt(["The "], "prompts to continue, one sample each")
    stop: list[str] = opt([], "stop strings: a completion ends before the first one")
    seed: int = opt(0, "sampling seed (each prompt uses seed + its index)")

    def validate(self) -> None:
        super().validate()
        if not self.prompts:
            raise ConfigError("prompts", "at least one prompt is required")
        if any(not s for s in self.stop):
            raise ConfigError("stop", "stop strings must not be empty")


INPUTS = ("model", "draft_model")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Generate (or return the cached result); returns the stage manifest. Without ``out``: a one-off
    run that prints the samples and writes nothing (``print_samples``)."""
    if not cfg.out:
        return print_samples(cfg)
    return run_config(STAGE, cfg, INPUTS, sample, version=VERSION, force=force)


def print_samples(cfg: Config) -> dict[str, Any]:
    """Sample without the run store: each prompt and its completion on standard output; returns a
    manifest-shaped summary (status ``printed``) with the metrics.

    Raises:
        ConfigError: ``model`` (or ``draft_model``) is a run reference, which needs ``out``.
    """
    import tempfile
    from pathlib import Path

    inputs = {}
    for name, ref in config_inputs(cfg, *INPUTS).items():
        if str(ref).startswith("@"):
            raise ConfigError(
                name, f"{ref} names a stage of a run: give --out RUN/generate, or a checkpoint path"
            )
        inputs[name] = Path(ref).expanduser().resolve()
        if not inputs[name].exists():
            raise ConfigError(name, f"not found: {inputs[name]}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmforge-generate-") as tmp:
        ctx = StageContext(stage=STAGE, instance=STAGE, dir=Path(tmp), run_dir=Path(tmp), inputs=inputs)
        metrics = sample(cfg, ctx)
        rows = [json.loads(line) for line in (Path(tmp) / "samples.jsonl").read_text("utf-8").splitlines()]
    for i, row in enumerate(rows):
        print(f"--- sample {i} ({row['tokens']} tokens, {row['finish_reason']})")
        print(row["prompt"] + row["completion"], flush=True)
    duration = round(time.perf_counter() - start, 3)
    return {
        "stage": STAGE,
        "instance": STAGE,
        "status": "printed",
        "metrics": metrics,
        "duration_s": duration,
    }


def sample(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Continue every prompt (one batch) and write one JSON line per sample."""
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import default_stop_ids
    from lmforge.model.checkpoint import load_model, resolve_checkpoint
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.train import load_tokenizer, special_id

    rt = create_runtime(cfg.device, "fp32", seed=cfg.seed)
    ckpt_dir = resolve_checkpoint(ctx.inputs["model"], cfg.checkpoint)
    model, _ = load_model(ckpt_dir, device=rt.device)
    tok = load_tokenizer(ckpt_dir / TOKENIZER_FILE)
    bos = special_id(tok, "<|bos|>")
    params = cfg.sampling_params(seed=cfg.seed, stop=cfg.stop, stop_ids=default_stop_ids(tok))
    draft: Any = None if cfg.draft == "none" else cfg.draft
    if cfg.draft == "model":
        from lmforge.inference.speculative import load_draft

        draft = load_draft(ctx.inputs["draft_model"], cfg.checkpoint, model, tok)
    if draft is not None and cfg.repetition_penalty != 1:
        log.warning(
            "draft %s is not used: repetition_penalty %g != 1 is decoded plainly",
            cfg.draft,
            cfg.repetition_penalty,
        )
    start = time.perf_counter()
    prompts = [[bos] + tok.encode(p, add_special_tokens=False).ids for p in cfg.prompts]
    engine = Engine(model, tok, weights=cfg.weights, draft=draft, draft_tokens=cfg.draft_tokens)
    completions = engine.generate(prompts, params)
    dt = time.perf_counter() - start
    with (ctx.dir / "samples.jsonl").open("w", encoding="utf-8") as fh:
        for i, (prompt, c) in enumerate(zip(cfg.prompts, completions)):
            row = {
                "prompt": prompt,
                "completion": c.text,
                "tokens": len(c.ids),
                "finish_reason": c.finish_reason,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            log.info("sample %d: %r", i, (prompt + c.text)[:200])
    n_tokens = sum(len(c.ids) for c in completions)
    metrics = {"samples": len(cfg.prompts), "tokens": n_tokens, "tokens_per_s": n_tokens / max(dt, 1e-9)}
    metrics["decode_threads"] = engine.stats.threads  # the engine's measured choice (inference/probe.py)
    if cfg.draft != "none":
        metrics.update(draft_acceptance=engine.stats.acceptance, tokens_per_pass=engine.stats.tokens_per_pass)
    return metrics
