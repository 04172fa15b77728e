"""Write an lmforge decoder checkpoint as a Hugging Face directory of the family its config needs.

The family is Llama, or Qwen2 (``qkv_bias``), Qwen3 (``qk_norm``) or Gemma (``scale_emb`` + GeGLU), as
``hf_families.export_family`` picks it. The directory holds ``config.json``
(``hf_families.to_family_config``), ``model.safetensors`` (weights under the family's names,
``hf_families.to_family_state_dict``; a tied output head is stored once, as ``save_pretrained`` does), ``generation_config.json`` (bos / eos / pad, with ``<|end|>`` as a second eos so chat replies
stop), and the tokenizer as ``tokenizer.json`` + ``tokenizer_config.json`` (with the chat template) +
``special_tokens_map.json``, so ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` work offline.

Every configuration check runs before anything is written: a configuration no family can express
fails with one message naming each field (``hf_families.check_family``). An encoder in BERT's form
(post-norm, embedding LayerNorm: every imported BERT and what is fine-tuned from it) is written as
``BertForMaskedLM`` (``hf_bert.to_bert_config``/``to_bert_state_dict``; its tokenizer as BERT's). lmforge's
own pre-norm encoder is refused: no mapping of its weights makes ``BertModel`` compute the same
function, so nothing partial is exported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.errors import ConfigError, InputError
from lmforge.interop.hf_bert import bert_gaps, bert_tokenizer_config, to_bert_config, to_bert_state_dict
from lmforge.interop.hf_families import check_family, to_family_config, to_family_state_dict
from lmforge.interop.hf_import import max_logit_difference, require_transformers
from lmforge.model.checkpoint import CONFIG_FILE, load_model
from lmforge.model.config import ModelConfig
from lmforge.runstore import TOKENIZER_FILE, read_json
from lmforge.tokenizer.chat import hf_tokenizer_config, with_bos
from lmforge.tokenizer.train import load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
ENCODER_REFUSAL = (
    "this encoder cannot be exported as a Hugging Face BertForMaskedLM, which computes another function: "
    "{gaps}; lmforge's default encoder is pre-norm (x + f(norm(x))) with a final norm, BERT post-norm "
    "(norm(x + f(x))) with an embedding LayerNorm; keep the lmforge checkpoint (lmforge eval / serve read it)"
)


def check_exportable(cfg: ModelConfig) -> str:
    """The ``model_type`` ``cfg`` is written as with equal logits (llama, qwen2, qwen3, gemma or bert), or
    ConfigError naming every field that family lacks."""
    if cfg.arch == "encoder":
        gaps = bert_gaps(cfg)
        if gaps:
            raise ConfigError("arch", ENCODER_REFUSAL.format(gaps="; ".join(gaps)))
        return "bert"
    return check_family(cfg)


def read_checkpoint_config(ckpt_dir: Path) -> ModelConfig:
    """The ``ModelConfig`` of a checkpoint directory (``model_config.json``), without loading weights."""
    return ModelConfig.from_dict(read_json(Path(ckpt_dir) / CONFIG_FILE, "model config"))


@dataclass
class Exported:
    """What an export read and wrote: the checkpoint's model (eval mode), its tokenizer's size and the
    ``model_type`` of the directory (llama, qwen2, qwen3 or gemma)."""

    model: nn.Module
    tokenizer_size: int
    family: str


def export_hf(ckpt_dir: Path, out_dir: Path, dtype: str = "float32") -> Exported:
    """Write the checkpoint ``ckpt_dir`` to ``out_dir`` as a Hugging Face directory (the files ``HF_FILES``)
    of the family its config needs (``check_exportable``).

    Raises:
        ConfigError: a configuration no family can express (nothing is written).
        InputError: no ``tokenizer.json`` in the checkpoint, or a tokenizer larger than the model's
            vocabulary; transformers not installed.
        ValueError: an unknown ``dtype``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    cfg = read_checkpoint_config(ckpt_dir)
    family = check_exportable(cfg)
    require_transformers()
    import transformers

    tok = load_tokenizer(ckpt_dir / TOKENIZER_FILE)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    if n_tok > cfg.vocab_size:
        raise InputError(f"{ckpt_dir}: tokenizer has {n_tok} tokens but the model only {cfg.vocab_size}")
    model, _ = load_model(ckpt_dir)
    if family == "bert":
        return export_bert(model, out_dir, cfg, tok, dtype)
    ids = {name: tok.token_to_id(f"<|{name}|>") for name in ("bos", "eos", "pad", "end")}
    hf_state = to_family_state_dict(model.state_dict(), cfg)
    if cfg.tie_embeddings:
        hf_state.pop("lm_head.weight")  # stored once, as save_pretrained does; re-tied on load
    hf_state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in hf_state.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(hf_state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    hf_config = to_family_config(
        cfg, bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], dtype=dtype
    )
    hf_config.save_pretrained(out_dir)
    eos = [ids["eos"]] + ([ids["end"]] if ids["end"] is not None else [])
    transformers.GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=eos, pad_token_id=ids["pad"]
    ).save_pretrained(out_dir)
    (out_dir / "tokenizer.json").write_text(with_bos(tok, ids["bos"]).to_str(), encoding="utf-8")
    tok_config = hf_tokenizer_config(tok)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1) + "\n")
    special_map = {k: v for k, v in tok_config.items() if k.endswith("_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=1) + "\n")
    logger.info(
        "exported %s as Hugging Face %s (%s) to %s", ckpt_dir, family, hf_config.architectures, out_dir
    )
    return Exported(model.eval(), n_tok, family)


def export_bert(model: nn.Module, out_dir: Path, cfg: ModelConfig, tok: Any, dtype: str) -> Exported:
    """Write a BERT-form encoder (``EncoderForPretraining``) as ``BertForMaskedLM`` (config, weights,
    tokenizer files)."""
    state = {
        k: v.detach().to(DTYPES[dtype]).contiguous()
        for k, v in to_bert_state_dict(model.state_dict()).items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    hf_config = to_bert_config(cfg, tok)
    hf_config.dtype = dtype
    hf_config.save_pretrained(out_dir)
    (out_dir / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    tok_config = bert_tokenizer_config(tok, cfg)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1) + "\n")
    special_map = {k: v for k, v in tok_config.items() if k.endswith("_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=1) + "\n")
    logger.info("exported the encoder as Hugging Face BertForMaskedLM to %s", out_dir)
    return Exported(model.eval(), tok.get_vocab_size(with_added_tokens=True), "bert")


@torch.no_grad()
def verify_hf_export(out_dir: Path, model: nn.Module, n_ids: int) -> float:
    """Load ``out_dir`` with ``AutoModelForCausalLM`` (or ``AutoModelForMaskedLM`` for an encoder, offline)
    and return the largest logit difference from ``model`` on a random batch; also checks
    ``AutoTokenizer`` loads it."""
    transformers = require_transformers()
    transformers.AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    if getattr(model.config, "arch", "decoder") == "encoder":
        hf = transformers.AutoModelForMaskedLM.from_pretrained(out_dir, local_files_only=True).float().eval()
        idx = torch.randint(
            0, n_ids, (2, min(32, model.config.block_size)), generator=torch.Generator().manual_seed(0)
        )
        ours, _ = model.eval()(idx)
        return float((ours - hf(input_ids=idx).logits).abs().max())
    hf = transformers.AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True)
    return max_logit_difference(model.eval(), hf.float().eval(), n_ids)
