"""Import a local Hugging Face decoder directory as an lmforge checkpoint (stage kind ``import.hf``).

The model types are those of ``model.hf_import.SUPPORTED`` (Llama, GPT-2, Qwen2, Qwen3, Mistral, Gemma).
``config.json`` is checked before the run store creates anything: an unsupported model type, or a
setting the decoder cannot reproduce, fails with nothing written (no ``<out>.partial``).

The stage directory becomes a training stage directory: ``ckpt/step_0/`` (``model.safetensors``,
``model_config.json``, ``tokenizer.json``, ``DONE``) and ``ckpt/final.json``, so ``lmforge finetune sft
--model DIR``, ``lmforge generate --model DIR`` and every other stage that takes a checkpoint read it.
lmforge's special and chat tokens are added to the tokenizer where missing (``model.hf_import``). With
``verify`` the imported model's logits are compared with the Hugging Face model's on a random batch
(``max_logit_diff``, over the original vocabulary); the stage fails above ``tolerance``. Nothing is
ever downloaded: ``model`` must be a local directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.errors import InputError
from lmforge.runstore import StageContext, resolve_ref, run_stage, write_json_atomic

STAGE = "import.hf"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge import hf``."""

    model: str = opt("", "a local Hugging Face model directory (config.json, weights, tokenizer)", path=True)
    out: str = opt("", "output stage directory (holds ckpt/step_0)", path=True)
    verify: bool = opt(True, "compare the imported model's logits with the Hugging Face model's")
    tolerance: float = opt(1e-4, "largest logit difference verify accepts")

    def validate(self) -> None:
        if self.tolerance <= 0:
            raise ConfigError("tolerance", f"must be > 0, got {self.tolerance}")


INPUTS = ("model",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Import (or return the cached result); returns the stage manifest."""
    if not cfg.model:
        raise ConfigError("model", "a Hugging Face model directory is required (--model path/to/hf)")
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/import)")
    refuse_early(cfg.model, cfg.out)
    return run_stage(
        STAGE, cfg, out=cfg.out, inputs={"model": cfg.model}, work=work, version=VERSION, force=force
    )


def refuse_early(model: str, out: str) -> None:
    """Raise InputError / ConfigError if the directory ``model`` (resolved as the run store will) has a
    model type or a config that cannot be imported, before the run store creates anything; a missing
    input is left for it to report."""
    from lmforge.model.hf_import import read_hf_config  # torch and transformers: not for --help

    hf_dir = resolve_ref(model, Path(out).expanduser().resolve())
    if hf_dir.exists():
        read_hf_config(hf_dir)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read the Hugging Face model and tokenizer, add lmforge's tokens, check parity, save a checkpoint."""
    from lmforge.model import hf_import
    from lmforge.tokenizer.train import save_tokenizer
    from lmforge.training.checkpoint import FINAL_FILE, checkpoint_dir, save_checkpoint

    hf_dir = ctx.inputs["model"]
    tok = hf_import.read_hf_tokenizer(hf_dir)  # first: it fails fast, the weights take a while
    read = hf_import.read_hf_model(hf_dir)
    n_original = tok.get_vocab_size(with_added_tokens=True)
    if n_original > read.config.vocab_size:
        raise InputError(
            f"{hf_dir}: the tokenizer has {n_original} tokens but the model only {read.config.vocab_size} rows"
        )
    added = hf_import.add_lmforge_tokens(tok)
    state, mcfg = hf_import.grow_vocab(read.state, read.config, tok, added, read.special)
    model = hf_import.build_decoder(mcfg, state)
    metrics: dict[str, float] = {
        "parameters": model.num_params(non_embedding=False),
        "vocab_size": mcfg.vocab_size,
        "added_tokens": len(added),
    }
    if cfg.verify:
        diff = hf_import.max_logit_difference(model, read.hf, n_original, columns=n_original)
        metrics["max_logit_diff"] = diff
        if diff > cfg.tolerance:
            raise RuntimeError(
                f"imported logits differ from the Hugging Face model's by {diff:.3g} > {cfg.tolerance}"
            )
    tok_path = save_tokenizer(tok, ctx.dir / "tokenizer")
    ckpt_root = ctx.dir / "ckpt"
    save_checkpoint(checkpoint_dir(ckpt_root, 0), model, mcfg, tokenizer_path=tok_path)
    write_json_atomic(ckpt_root / FINAL_FILE, {"last": "step_0", "best": "step_0", "source": str(hf_dir)})
    return metrics
