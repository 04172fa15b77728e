"""Write an lmforge decoder checkpoint as a GGUF file (llama architecture) for llama.cpp-family tools.

Written with the ``gguf`` Python package (``pip install 'lmforge[hf]'``), the same writer llama.cpp's
``convert_hf_to_gguf.py`` uses:

- Metadata: ``general.architecture = "llama"`` and ``llama.context_length`` (block_size),
  ``embedding_length``, ``block_count``, ``feed_forward_length``, ``attention.head_count`` /
  ``head_count_kv``, ``rope.dimension_count`` (head_dim), ``rope.freq_base``,
  ``attention.layer_norm_rms_epsilon``, ``vocab_size``, ``general.file_type``.
- Tensors: our weights go through their Hugging Face Llama names (``hf_names``, the one mapping table)
  and then through ``gguf.TensorNameMap`` to llama.cpp's names (``token_embd``, ``blk.N.attn_q`` / ``k``
  / ``v`` / ``output``, ``ffn_gate`` / ``up`` / ``down``, ``attn_norm``, ``ffn_norm``, ``output_norm``,
  ``output``). A tied output head is left out; llama.cpp then reuses ``token_embd``, as for tied HF
  models. ``--dtype f16`` stores matrices in f16 and keeps 1-D tensors (norm gains, biases) in f32,
  as llama.cpp's converter does.
- Tokenizer: ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE), tokens (padded with ``[PADn]`` unused
  tokens up to ``vocab_size``), token types (special tokens are CONTROL), merges, bos / eos / pad ids,
  ``add_bos_token`` and the chat template; ``tokenizer.ggml.pre`` names llama.cpp's pre-tokeniser
  regex matching ours (``gpt-2`` for the default, ``llama-bpe`` for the ``gpt4`` preset).

RoPE layout — why q and k are permuted. Our RoPE rotates channel j of a head with channel
j + head_dim/2 (the half-split, "NeoX" layout; decoder.apply_rope), exactly as Hugging Face Llama's
``rotate_half`` does, so HF export needs no permutation (hf_names). llama.cpp's llama architecture
uses ``LLAMA_ROPE_TYPE_NORM``, which rotates *adjacent* channels (2i, 2i+1) — the layout of Meta's
original checkpoints. llama.cpp's converter therefore permutes the rows of HF's ``q_proj`` and
``k_proj`` (``LlamaModel.permute``: per head, reshape the rows to ``[2, head_dim/2]`` and swap the two
axes), which moves row j + head_dim/2 next to row j. Applying that same permutation to q and k (and
their biases) makes llama.cpp's adjacent-pair rotation compute our rotation; because q and k are
permuted alike, every dot product q·k — hence attention — is unchanged, and v / o are not touched.
The key heads are permuted with ``n_kv_head`` (GQA), as in the converter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from lmforge.errors import InputError
from lmforge.interop.hf_export import check_exportable, read_checkpoint_config
from lmforge.model.checkpoint import load_model
from lmforge.model.config import ModelConfig
from lmforge.model.hf_names import to_hf_state_dict
from lmforge.runstore import TOKENIZER_FILE
from lmforge.tokenizer.chat import CHAT_TEMPLATE_JINJA
from lmforge.tokenizer.train import CHAT_TOKENS, PRE_TOKENIZER_PATTERNS, load_tokenizer, tokenizer_kind

logger = logging.getLogger(__name__)

GGUF_DTYPES = ("f32", "f16")


def require_gguf():  # noqa: ANN201 (returns the module)
    """Import the ``gguf`` package or raise InputError naming the extra to install."""
    try:
        import gguf
    except ImportError as exc:
        raise InputError("GGUF export needs the gguf package: pip install 'lmforge[hf]'") from exc
    return gguf


def rope_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q or k projection (``[n_head*Q, D]`` or a bias ``[n_head*Q]``) from the half-split RoPE
    layout (ours, HF's) to GGML's adjacent pairs: llama.cpp's ``LlamaModel.permute`` (module docstring)."""
    shape = weight.shape
    return weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict as llama.cpp tensors: GGUF name → fp32 tensor (q/k permuted, tied head left out)."""
    gguf = require_gguf()
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, cfg.n_layer)
    hf = to_hf_state_dict(state, cfg)
    if cfg.tie_embeddings:
        hf.pop("lm_head.weight")
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{key} has no llama.cpp tensor name")
        value = value.detach().float()
        if ".self_attn.q_proj." in key:
            value = rope_permute(value, cfg.n_head)
        elif ".self_attn.k_proj." in key:
            value = rope_permute(value, cfg.kv_heads)
        out[name] = value.contiguous()
    return out


def pre_tokenizer_name(tok: Tokenizer) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for our pre-tokeniser; warns when none matches exactly."""
    pre = json.loads(tok.to_str()).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    patterns = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    if patterns == [PRE_TOKENIZER_PATTERNS["gpt2"]]:
        return "gpt-2"
    if patterns == [PRE_TOKENIZER_PATTERNS["gpt4"]]:
        return "llama-bpe"  # llama.cpp's Llama 3 regex: the same split (case-insensitive contractions)
    logger.warning(
        "the tokenizer's pre-tokeniser %s has no llama.cpp equivalent; writing 'gpt-2', so llama.cpp may "
        "split text differently from lmforge",
        patterns or pre.get("type"),
    )
    return "gpt-2"


def tokenizer_metadata(tok: Tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens (padded to ``vocab_size``), their GGUF token types and the merges of a byte-level BPE.

    Raises:
        InputError: not a BPE tokenizer (llama.cpp's ``gpt2`` tokenizer model is byte-level BPE).
    """
    gguf = require_gguf()
    kind = tokenizer_kind(tok)
    if kind != "bpe":
        raise InputError(
            f"GGUF export supports byte-level BPE tokenizers (llama.cpp's 'gpt2' model); this one is {kind!r}"
        )
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    added = tok.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            if i in added:
                types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tok.to_str())["model"].get("merges", [])
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]  # ["a", "b"] or "a b"
    return tokens, [int(t) for t in types], merges


def export_gguf(ckpt_dir: Path, out_file: Path, dtype: str = "f32") -> torch.nn.Module:
    """Write the checkpoint ``ckpt_dir`` as a llama-architecture GGUF file; return the loaded model.

    Raises:
        ConfigError: a configuration llama cannot express (nothing is written).
        InputError: no BPE ``tokenizer.json`` in the checkpoint, a tokenizer larger than the model's
            vocabulary, or the gguf package missing.
        ValueError: ``dtype`` not in ``GGUF_DTYPES``.
    """
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    gguf = require_gguf()
    ckpt_dir, out_file = Path(ckpt_dir), Path(out_file)
    cfg = read_checkpoint_config(ckpt_dir)
    check_exportable(cfg)
    tok = load_tokenizer(ckpt_dir / TOKENIZER_FILE)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    if n_tok > cfg.vocab_size:
        raise InputError(f"{ckpt_dir}: tokenizer has {n_tok} tokens but the model only {cfg.vocab_size}")
    tokens, types, merges = tokenizer_metadata(tok, cfg.vocab_size)
    model, _ = load_model(ckpt_dir)
    tensors = gguf_tensors(model.state_dict(), cfg)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_file), "llama")
    writer.add_name(ckpt_dir.name)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    file_type = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(file_type))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, setter in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id)):
        setter(tok.token_to_id(f"<|{name}|>"))
    writer.add_pad_token_id(tok.token_to_id("<|pad|>"))
    writer.add_add_bos_token(True)  # lmforge documents start with <|bos|>
    writer.add_add_eos_token(False)
    if all(tok.token_to_id(t) is not None for t in CHAT_TOKENS):
        # add_bos_token puts <|bos|> before whatever llama.cpp tokenizes, the rendered chat included:
        # the template must not write it again (a double BOS the model never saw in training)
        writer.add_chat_template(CHAT_TEMPLATE_JINJA.removeprefix("{{ '<|bos|>' }}"))
    for name, value in tensors.items():
        half = dtype == "f16" and value.dim() > 1
        writer.add_tensor(name, value.numpy().astype(np.float16 if half else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    logger.info("wrote %s (%d tensors, %s)", out_file, len(tensors), dtype)
    return model.eval()
