"""Export a decoder checkpoint as a Hugging Face directory (stage kind ``export.hf``).

The family is the one the checkpoint's config needs: Llama, Qwen2 (``qkv_bias``), Qwen3 (``qk_norm``) or
Gemma (``scale_emb`` + GeGLU); ``config.json``'s ``model_type`` and ``architectures`` record it. The stage
directory itself is the Hugging Face directory: ``config.json``, ``model.safetensors``,
``generation_config.json`` and the tokenizer files (``interop.hf_export``), beside the manifest. With
``verify`` the directory is loaded back with ``transformers`` and the largest logit difference from
the lmforge model on a random batch is recorded (``max_logit_diff``); the stage fails above
``tolerance``. A configuration no family can express fails before anything is written.

``adapter`` (a ``finetune lora`` stage directory, or an adapter directory) adds its PEFT adapter as
``adapter/`` with ``base_model_name_or_path`` pointing at this export, so
``peft.AutoPeftModelForCausalLM.from_pretrained("<out>/adapter")`` loads base and adapter in one call
(the adapter as trained names the lmforge checkpoint, which ``transformers`` cannot read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge.config import above, opt
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
    adapter: str = opt(
        "",
        "a finetune lora stage (or adapter directory) to add as adapter/, pointing at this export",
        path=True,
    )

    def validate(self) -> None:
        above(self, 0, "tolerance")


INPUTS = ("model", "adapter")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Export (or return the cached result); returns the stage manifest."""
    refuse_early(cfg.model, cfg.out, cfg.checkpoint)
    inputs = {"model": cfg.model} | ({"adapter": cfg.adapter} if cfg.adapter else {})
    return run_stage(STAGE, cfg, out=cfg.out, inputs=inputs, work=work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Write the Hugging Face directory into the stage directory, then (optionally) check it loads and agrees."""
    from lmforge.interop.hf_export import export_hf, verify_hf_export
    from lmforge.model.checkpoint import resolve_checkpoint

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
    if "adapter" in ctx.inputs:
        metrics["adapter_tensors"] = add_adapter(
            ctx.inputs["adapter"], ctx.dir, Path(cfg.out).expanduser().resolve()
        )
    return metrics


def add_adapter(source: Path, export_dir: Path, final_dir: Path) -> int:
    """Copy the PEFT adapter at ``source`` (a directory holding it, or a stage directory with
    ``adapter/``) into ``export_dir/adapter`` with ``base_model_name_or_path`` = ``final_dir`` (where the
    export ends up); returns the number of adapter tensors.

    Raises:
        InputError: no ``adapter_config.json`` + ``adapter_model.safetensors`` there.
    """
    import json
    import shutil

    from safetensors import safe_open

    from lmforge.errors import InputError
    from lmforge.model.lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

    found = next((d for d in (source, source / "adapter") if (d / ADAPTER_CONFIG_FILE).is_file()), None)
    if found is None or not (found / ADAPTER_WEIGHTS_FILE).is_file():
        raise InputError(
            f"adapter: {source} holds no PEFT adapter ({ADAPTER_CONFIG_FILE} + {ADAPTER_WEIGHTS_FILE})"
        )
    dest = export_dir / "adapter"
    dest.mkdir()
    shutil.copyfile(found / ADAPTER_WEIGHTS_FILE, dest / ADAPTER_WEIGHTS_FILE)
    config = json.loads((found / ADAPTER_CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = str(final_dir)
    (dest / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    with safe_open(str(dest / ADAPTER_WEIGHTS_FILE), "pt") as f:
        return len(list(f.keys()))
