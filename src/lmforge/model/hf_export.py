"""Write an lmforge decoder checkpoint as a Hugging Face directory of the family its config needs.

The family is Llama, or Qwen2 (``qkv_bias``), Qwen3 (``qk_norm``) or Gemma (``scale_emb`` + GeGLU), as
``hf_families.export_family`` picks it. The directory holds ``config.json``
(``hf_families.to_family_config``), ``model.safetensors`` (weights under the family's names,
``hf_families.to_family_state_dict``; a tied output head is stored once, as ``save_pretrained`` does), ``generation_config.json`` (bos / eos / pad, with ``<|end|>`` as a second eos so chat replies
stop), and the tokenizer as ``tokenizer.json`` + ``tokenizer_config.json`` (with the chat template) +
``special_tokens_map.json``, so ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` work offline.

Every configuration check runs before anything is written: a configuration no family can express
fails with one message naming each field (``hf_families.check_family``). Encoders are refused:
lmforge's encoder is pre-norm with a final norm and no LayerNorm on the embeddings (model/encoder.py),
while BERT is post-norm (LayerNorm after each residual addition) with an embedding LayerNorm; no
mapping of weights makes ``BertModel`` compute the same function, so nothing partial is exported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.errors import ConfigError, InputError
from lmforge.model.config import ModelConfig
from lmforge.model.hf_families import check_family, to_family_config, to_family_state_dict
from lmforge.model.hf_import import max_logit_difference, require_transformers
from lmforge.tokenizer.chat import hf_tokenizer_config
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
    "arch='encoder' cannot be exported as a Hugging Face BertModel: lmforge's encoder is pre-norm "
    "(x + f(norm(x))) with a final norm and no LayerNorm on the embeddings, while BERT is post-norm "
    "(norm(x + f(x))) with an embedding LayerNorm, so no mapping of the weights computes the same "
    "function; keep the lmforge checkpoint (lmforge eval / serve read it)"
)


def check_exportable(cfg: ModelConfig) -> str:
    """The ``model_type`` ``cfg`` is written as with equal logits (llama, qwen2, qwen3 or gemma), or
    ConfigError naming every field that family lacks (or why an encoder has no BERT form)."""
    if cfg.arch == "encoder":
        raise ConfigError("arch", ENCODER_REFUSAL)
    return check_family(cfg)


def read_checkpoint_config(ckpt_dir: Path) -> ModelConfig:
    """The ``ModelConfig`` of a checkpoint directory (``model_config.json``), without loading weights."""
    from lmforge.training.checkpoint import CONFIG_FILE

    path = Path(ckpt_dir) / CONFIG_FILE
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read model config {path}: {exc}") from exc


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
    from lmforge.training.checkpoint import TOKENIZER_FILE, load_model

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
    ids = {name: tok.token_to_id(f"<|{name}|>") for name in ("bos", "eos", "pad", "end")}
    model, _ = load_model(ckpt_dir)
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
    (out_dir / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    tok_config = hf_tokenizer_config(tok)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1) + "\n")
    special_map = {k: v for k, v in tok_config.items() if k.endswith("_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=1) + "\n")
    logger.info(
        "exported %s as Hugging Face %s (%s) to %s", ckpt_dir, family, hf_config.architectures, out_dir
    )
    return Exported(model.eval(), n_tok, family)


def verify_hf_export(out_dir: Path, model: nn.Module, n_ids: int) -> float:
    """Load ``out_dir`` with ``AutoModelForCausalLM`` (offline) and return the largest logit difference
    from ``model`` on a random batch; also checks ``AutoTokenizer`` loads it."""
    transformers = require_transformers()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True)
    transformers.AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    return max_logit_difference(model.eval(), hf.float().eval(), n_ids)
