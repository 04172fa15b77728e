"""Read a local Hugging Face decoder directory into a ``Decoder`` and an lmforge tokenizer.

``read_hf_config`` reads ``config.json`` and maps it onto a ``ModelConfig`` (or refuses the model type
or every setting the decoder cannot reproduce) without touching the weights, so a caller can refuse
before it writes anything. ``read_hf_model`` then loads the weights with ``transformers`` (never from
the hub: ``local_files_only``), maps the state dict (Llama and GPT-2 through ``hf_names``, Qwen2, Qwen3,
Mistral and Gemma through ``hf_families``) and returns a ``Decoder`` whose logits equal the Hugging
Face model's. ``read_hf_tokenizer`` takes ``tokenizer.json`` or, when a
directory has only the slow files (GPT-2's ``vocab.json`` + ``merges.txt``), lets ``transformers``
convert them to a fast tokenizer.

lmforge code finds its special tokens by name (``<|bos|>``, ``<|eos|>``, ``<|pad|>`` and the chat tokens
``<|system|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>``), which a Hugging Face tokenizer does not
have. ``add_lmforge_tokens`` appends the missing ones as special tokens after the existing ids (no
existing id moves, so the model's behaviour on the original vocabulary is unchanged) and
``grow_vocab`` gives them embedding rows: ``<|bos|>``, ``<|eos|>`` and ``<|pad|>`` copy the rows of
the model's own bos / eos / pad tokens (so ``<|bos|>`` means to the model what its bos meant), the
chat tokens start at the mean embedding (Hewitt 2021, "Initializing new word embeddings for pretrained
language models"), to be learned by fine-tuning. A directory that already has them (e.g. one written
by ``lmforge export hf``) is imported with its ids unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tokenizers import AddedToken, Tokenizer

from lmforge.errors import ConfigError, InputError, UnsafePickleError
from lmforge.interop.hf_families import (
    FAMILIES,
    from_family_config,
    from_family_state_dict,
    relative_problems,
)
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.model.hf_names import (
    from_gpt2_config,
    from_gpt2_state_dict,
    from_hf_state_dict,
    from_llama_config,
)
from lmforge.runstore import read_json
from lmforge.tokenizer.chat import without_bos
from lmforge.tokenizer.train import CHAT_TOKENS, SPECIAL_TOKENS

logger = logging.getLogger(__name__)

# model_type → (config mapping, state-dict mapping), both from the one table of names of each family
_READERS: dict[str, tuple[Callable[[Any], ModelConfig], Callable[..., dict[str, torch.Tensor]]]] = {
    "llama": (from_llama_config, from_hf_state_dict),
    "gpt2": (from_gpt2_config, from_gpt2_state_dict),
    **{t: (from_family_config, functools.partial(from_family_state_dict, model_type=t)) for t in FAMILIES},
}
DECODER_TYPES = tuple(_READERS)
# BERT is read as an encoder (interop/hf_bert.py), not by read_hf_model; it is listed as importable.
ENCODER_TYPES = ("bert",)
SUPPORTED = (*DECODER_TYPES, *ENCODER_TYPES)
LMFORGE_TOKENS = (*SPECIAL_TOKENS, *CHAT_TOKENS)
# tokenizer files other than tokenizer.json that transformers converts to a fast tokenizer
SLOW_TOKENIZER_FILES = ("vocab.json", "tokenizer.model", "vocab.txt")


@dataclass
class HFModel:
    """A Hugging Face causal LM read from a directory, with its lmforge counterpart.

    Attributes:
        model_type: one of ``DECODER_TYPES``.
        hf: the ``transformers`` model (fp32, eval mode), kept for parity checks.
        config: the equivalent ``ModelConfig``; ``state``: its ``Decoder`` state dict (our names).
        special: the model's own ``bos`` / ``eos`` / ``pad`` token ids (None where unset).
    """

    model_type: str
    hf: Any
    config: ModelConfig
    state: dict[str, torch.Tensor]
    special: dict[str, int | None]


def require_transformers() -> Any:
    """Import ``transformers`` or raise InputError saying which extra to install."""
    try:
        import transformers
    except ImportError as exc:
        raise InputError("Hugging Face interop needs transformers: pip install 'lmforge[hf]'") from exc
    return transformers


def load_weights(auto_class: str, hf_dir: Path) -> Any:
    """``transformers.<auto_class>.from_pretrained(hf_dir)``, offline, in fp32 and eval mode.

    Raises:
        UnsafePickleError: a ``pytorch_model.bin`` holding code or objects beyond tensors (refused by
            transformers' ``weights_only`` loading, never run).
        InputError: weights that transformers cannot load.
    """
    transformers = require_transformers()
    try:
        hf = getattr(transformers, auto_class).from_pretrained(hf_dir, local_files_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError.from_exception(pickled_weights(hf_dir), exc) from exc
    except (OSError, ValueError, SafetensorError) as exc:
        raise InputError(f"{hf_dir}: transformers cannot load the weights: {exc}") from exc
    return hf.float().eval()


def pickled_weights(hf_dir: Path) -> str:
    """The pickled weight file(s) of a directory, for messages: ``pytorch_model.bin`` or its shards."""
    single = Path(hf_dir) / "pytorch_model.bin"
    return str(single if single.is_file() or not any(Path(hf_dir).glob("*.bin")) else Path(hf_dir) / "*.bin")


def read_hf_config(hf_dir: Path) -> tuple[str, Any, ModelConfig]:
    """The ``model_type``, transformers config and ``ModelConfig`` of a local decoder directory; reads
    ``config.json`` only (no weights).

    Raises:
        InputError: not a directory with a ``config.json``, or a model type that is not a decoder of
            ``DECODER_TYPES`` (the message lists ``SUPPORTED``).
        ConfigError: a setting the decoder cannot reproduce exactly, or a relative of a supported family
            that computes something else (Gemma 2 / 3); the message names each field.
    """
    hf_dir = Path(hf_dir)
    path = hf_dir / "config.json"
    if not path.is_file():
        raise InputError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    raw = read_json(path)
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    supported = ", ".join(SUPPORTED)
    if problems := relative_problems(model_type, raw):
        raise ConfigError(
            "model",
            f"cannot import model_type {model_type!r} exactly: {'; '.join(problems)} (supported: {supported})",
        )
    if model_type in ENCODER_TYPES:
        raise InputError(f"{hf_dir}: model_type {model_type!r} is an encoder; read_hf_model reads decoders")
    if model_type not in DECODER_TYPES:
        raise InputError(f"{hf_dir}: model_type {model_type!r} cannot be imported; supported: {supported}")
    transformers = require_transformers()
    hf_config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    return model_type, hf_config, _READERS[model_type][0](hf_config)


def read_hf_model(hf_dir: Path) -> HFModel:
    """Load a local Hugging Face decoder directory (``DECODER_TYPES``) and map it onto a ``Decoder``.

    Raises:
        UnsafePickleError: a ``pytorch_model.bin`` holding code or objects beyond tensors (refused by
            transformers' ``weights_only`` loading, never run).
        InputError: as ``read_hf_config``, or weights that transformers cannot load.
        ConfigError: a setting the decoder cannot reproduce exactly (the message names each).
        ValueError: weights that do not fit the mapped config.
    """
    hf_dir = Path(hf_dir)
    model_type, hf_config, cfg = read_hf_config(hf_dir)
    hf = load_weights("AutoModelForCausalLM", hf_dir)
    hf_state = hf.state_dict()
    state = _READERS[model_type][1](hf_state, cfg)
    special = {name: getattr(hf_config, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    for name, value in special.items():  # e.g. a list of eos ids: the first stands for the token
        special[name] = value[0] if isinstance(value, (list, tuple)) and value else value
    logger.info("read %s model %s: %s", model_type, hf_dir, cfg)
    return HFModel(model_type, hf, cfg, state, special)


def read_hf_tokenizer(hf_dir: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face directory as a ``tokenizers.Tokenizer``.

    ``tokenizer.json`` when present; otherwise transformers converts the slow files (e.g. GPT-2's
    ``vocab.json`` + ``merges.txt``) into a fast tokenizer.

    Raises:
        InputError: no tokenizer that transformers can load as a fast tokenizer.
    """
    hf_dir = Path(hf_dir)
    if (hf_dir / "tokenizer.json").is_file():  # an lmforge export's <|bos|> post-processor is dropped
        return without_bos(Tokenizer.from_file(str(hf_dir / "tokenizer.json")))
    files = ", ".join(sorted(p.name for p in hf_dir.iterdir()))
    if not any((hf_dir / name).is_file() for name in SLOW_TOKENIZER_FILES):
        # transformers would build an empty tokenizer here rather than fail
        raise InputError(
            f"{hf_dir}: no tokenizer.json and no tokenizer files transformers can convert "
            f"({', '.join(SLOW_TOKENIZER_FILES)}); found: {files}"
        )
    transformers = require_transformers()
    try:
        fast = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True, use_fast=True)
        backend = fast.backend_tokenizer
    except Exception as exc:  # transformers raises many types here (OSError, ValueError, ImportError)
        raise InputError(
            f"{hf_dir}: no tokenizer.json and transformers cannot build a fast tokenizer from the files "
            f"here ({files}): {exc}"
        ) from exc
    return Tokenizer.from_str(backend.to_str())


def add_lmforge_tokens(tok: Tokenizer) -> list[str]:
    """Append lmforge's special and chat tokens that ``tok`` lacks; return those added, in id order."""
    missing = [t for t in LMFORGE_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return missing


def _new_row(table: torch.Tensor, source: int | None) -> torch.Tensor:
    """A row for a new token: a copy of row ``source``, or the mean row when there is none."""
    if source is not None and 0 <= source < table.shape[0]:
        return table[source].clone()
    return table.mean(dim=0)


def grow_vocab(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    tok: Tokenizer,
    added: list[str],
    special: dict[str, int | None],
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Give the tokens ``added`` to ``tok`` embedding (and untied output) rows; return state and config.

    The vocabulary grows to cover every id of ``tok``; rows of existing tokens are left as they are
    (an added token may take an unused row of a padded vocabulary).
    ``<|bos|>``/``<|eos|>``/``<|pad|>`` copy the rows of ``special``'s bos / eos / pad (pad falls back
    to eos), the others take the mean row (module docstring).
    """
    if not added:
        return state, cfg
    size = max(cfg.vocab_size, tok.get_vocab_size(with_added_tokens=True))
    sources = {"<|bos|>": special["bos"], "<|eos|>": special["eos"], "<|pad|>": special["pad"]}
    if sources["<|pad|>"] is None:
        sources["<|pad|>"] = special["eos"]
    keys = ["tok_emb.weight"] + ([] if cfg.tie_embeddings else ["lm_head.weight"])
    state = dict(state)
    for key in keys:
        old = state[key]
        table = torch.cat([old, old.new_zeros(size - old.shape[0], old.shape[1])])  # [size, D]
        for token in added:
            table[tok.token_to_id(token)] = _new_row(old, sources.get(token))
        state[key] = table
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    logger.info("added %d lmforge tokens %s; vocabulary %d -> %d", len(added), added, cfg.vocab_size, size)
    return state, dataclasses.replace(cfg, vocab_size=size)


def build_decoder(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Decoder:
    """A ``Decoder(cfg)`` in eval mode with ``state`` loaded strictly."""
    model = Decoder(cfg)
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def max_logit_difference(
    ours: Decoder, hf: Any, n_ids: int, columns: int | None = None, length: int = 32, seed: int = 0
) -> float:
    """Largest ``|our logit - Hugging Face logit|`` over a random batch ``[2, length]`` of ids < ``n_ids``.

    The first ``columns`` logits are compared (default: all those both models have); import passes the
    original vocabulary, since rows it gave to added tokens legitimately differ.
    """
    length = min(length, ours.config.block_size)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_ids, (2, length), generator=gen)
    theirs = hf(input_ids=idx).logits.float()  # [2, T, V_hf]
    mine = ours(idx).float()  # [2, T, V]
    cols = min(theirs.shape[-1], mine.shape[-1], columns or mine.shape[-1])
    return float((mine[..., :cols] - theirs[..., :cols]).abs().max())
