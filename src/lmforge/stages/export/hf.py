"""Export a decoder checkpoint as a Hugging Face directory (stage kind ``export.hf``).

The family is the one the checkpoint's config needs: Llama, Qwen2 (``qkv_bias``), Qwen3 (``qk_norm``) or
Gemma (``scale_emb`` + GeGLU); ``config.json``'s ``model_type`` and ``architectures`` record it. The stage
directory itself is the Hugging Face directory: ``config.json``, ``model.safetensors``,
``generation_config.json`` and the tokenizer files (``model.hf_export``), beside the manifest. With
``verify`` the directory is loaded back with ``transformers`` and the largest logit difference from
the lmforge model on a random batch is recorded (``max_logit_diff``); the stage fails above
``tolerance``. A configuration no family can express fails before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, run_stage
from lmforge.stages.export import refuse_early

STAGE = "export.hf"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge export hf``."""

    model: str = opt("@pretrain", "a checkpoint directory, or a training stage directory", path=True)
    out: str = opt("", "output stage directory (becomes the Hugging Face model directory)", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to use")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "dtype of the saved weights")
    verify: bool = opt(True, "load the export with transformers and compare logits")
    tolerance: float = opt(1e-4, "largest logit difference verify accepts (float32 weights)")

    def validate(self) -> None:
        if self.tolerance <= 0:
            raise ConfigError("tolerance", f"must be > 0, got {self.tolerance}")


INPUTS = ("model",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Export (or return the cached result); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/export-hf)")
    refuse_early(cfg.model, cfg.out, cfg.checkpoint)
    return run_stage(
        STAGE, cfg, out=cfg.out, inputs={"model": cfg.model}, work=work, version=VERSION, force=force
    )


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Write the Hugging Face directory into the stage directory, then (optionally) check it loads and agrees."""
    from lmforge.model.hf_export import export_hf, verify_hf_export
    from lmforge.training.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(ctx.inputs["model"], cfg.checkpoint)
    exported = export_hf(ckpt, ctx.dir, cfg.dtype)
    metrics: dict[str, float] = {
        "parameters": exported.model.num_params(non_embedding=False),
        "vocab_size": exported.model.config.vocab_size,
    }
    if cfg.verify:
        diff = verify_hf_export(ctx.dir, exported.model, exported.tokenizer_size)
        metrics["max_logit_diff"] = diff
        if cfg.dtype == "float32" and diff > cfg.tolerance:
            raise RuntimeError(
                f"transformers' logits differ from lmforge's by {diff:.3g} > tolerance {cfg.tolerance}"
            )
    return metrics
