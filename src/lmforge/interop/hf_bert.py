"""Read a local Hugging Face BERT-family encoder (or a sentence-transformers directory) into an lmforge encoder.

BERT (Devlin et al. 2019) is lmforge's ``Encoder`` with ``post_norm`` and ``emb_norm`` (model/encoder.py):
learned absolute positions, two token types, LayerNorm with biases (eps from the config), biased
linear layers, an erf-GELU MLP (``hidden_act`` ``gelu``; ``gelu_new``/``gelu_pytorch_tanh`` map to
``gelu_tanh``). The weights map by name alone, as the plain table ``BERT_KEY_TABLE``:

==========================================================  ==============================================
lmforge ``EncoderForPretraining``                            Hugging Face ``BertModel`` / ``BertForMaskedLM``
==========================================================  ==============================================
``encoder.tok_emb.weight``                                   ``embeddings.word_embeddings.weight``
``encoder.pos_emb.weight``                                   ``embeddings.position_embeddings.weight``
``encoder.seg_emb.weight``                                   ``embeddings.token_type_embeddings.weight``
``encoder.emb_norm.{p}``                                     ``embeddings.LayerNorm.{p}``
``encoder.blocks.{i}.attn.q_proj.{p}`` (k, v alike)          ``encoder.layer.{i}.attention.self.query.{p}``
``encoder.blocks.{i}.attn.o_proj.{p}``                       ``encoder.layer.{i}.attention.output.dense.{p}``
``encoder.blocks.{i}.attn_norm.{p}``                         ``encoder.layer.{i}.attention.output.LayerNorm.{p}``
``encoder.blocks.{i}.mlp.up_proj.{p}``                       ``encoder.layer.{i}.intermediate.dense.{p}``
``encoder.blocks.{i}.mlp.down_proj.{p}``                     ``encoder.layer.{i}.output.dense.{p}``
``encoder.blocks.{i}.mlp_norm.{p}``                          ``encoder.layer.{i}.output.LayerNorm.{p}``
``mlm_head.dense.{p}`` / ``mlm_head.norm.{p}``               ``cls.predictions.transform.dense/LayerNorm.{p}``
``mlm_head.bias``                                            ``cls.predictions.bias``
==========================================================  ==============================================

Keys may carry a ``bert.`` prefix (task models). The MLM head's decoder is tied to the word embeddings, as
in BERT. A directory without an MLM head (``BertModel``, e.g. every sentence-transformers model) gets a
freshly initialised one (``mlm_head_imported`` False in the report); the pooler (``pooler.dense``: BERT's
NSP/[CLS] projection) has no counterpart and is dropped: sentence-transformers does not use it, and
fine-tuning heads bring their own.

sentence-transformers directories (``modules.json``) name the transformer's folder and a ``Pooling``
module whose config declares how a sentence embedding is made (mean, [CLS] or max over tokens,
optionally L2-normalised by a ``Normalize`` module). ``read_pooling`` returns it; the import stage
stores it beside the checkpoint (``model.checkpoint.POOLING_FILE``) so fine-tuning stages pool as the model was trained to.

The tokenizer is kept as it is (WordPiece, lowercasing, ``[CLS]``/``[SEP]``/``[PAD]``/``[MASK]``), with its
fixed padding and truncation removed (lmforge pads and cuts batches itself); lmforge's own special and
chat tokens are appended after the existing ids (``hf_import.add_lmforge_tokens``), so no id moves.
``<|bos|>``, ``<|eos|>`` and ``<|pad|>`` start from the rows of ``[CLS]``, ``[SEP]`` and ``[PAD]``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from lmforge.errors import ConfigError, InputError
from lmforge.interop.hf_import import load_weights, require_transformers
from lmforge.model.config import ModelConfig
from lmforge.model.heads import EncoderForPretraining, pool
from lmforge.model.hf_names import _pattern  # the key-table template → regex rule, shared with decoders
from lmforge.runstore import read_json

logger = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls")  # those of model.heads.pool; max pooling is refused
# (lmforge key, Hugging Face BERT key); {i} = layer index, {p} = weight | bias.
BERT_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("encoder.tok_emb.weight", "embeddings.word_embeddings.weight"),
    ("encoder.pos_emb.weight", "embeddings.position_embeddings.weight"),
    ("encoder.seg_emb.weight", "embeddings.token_type_embeddings.weight"),
    ("encoder.emb_norm.{p}", "embeddings.LayerNorm.{p}"),
    ("encoder.blocks.{i}.attn.q_proj.{p}", "encoder.layer.{i}.attention.self.query.{p}"),
    ("encoder.blocks.{i}.attn.k_proj.{p}", "encoder.layer.{i}.attention.self.key.{p}"),
    ("encoder.blocks.{i}.attn.v_proj.{p}", "encoder.layer.{i}.attention.self.value.{p}"),
    ("encoder.blocks.{i}.attn.o_proj.{p}", "encoder.layer.{i}.attention.output.dense.{p}"),
    ("encoder.blocks.{i}.attn_norm.{p}", "encoder.layer.{i}.attention.output.LayerNorm.{p}"),
    ("encoder.blocks.{i}.mlp.up_proj.{p}", "encoder.layer.{i}.intermediate.dense.{p}"),
    ("encoder.blocks.{i}.mlp.down_proj.{p}", "encoder.layer.{i}.output.dense.{p}"),
    ("encoder.blocks.{i}.mlp_norm.{p}", "encoder.layer.{i}.output.LayerNorm.{p}"),
    ("mlm_head.dense.{p}", "cls.predictions.transform.dense.{p}"),
    ("mlm_head.norm.{p}", "cls.predictions.transform.LayerNorm.{p}"),
    ("mlm_head.bias", "cls.predictions.bias"),
)
# HF keys that have no lmforge counterpart on purpose (module docstring); never an error.
_DROPPED = re.compile(
    r"(pooler\..*|embeddings\.position_ids|cls\.predictions\.decoder\.(weight|bias)|cls\.seq_relationship\..*)"
)
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


_FROM_HF = tuple((_pattern(hf), ours) for ours, hf in BERT_KEY_TABLE)
_TO_HF = tuple((_pattern(ours), hf) for ours, hf in BERT_KEY_TABLE)


@dataclass
class Pooling:
    """How a sentence-transformers model turns token states into a sentence embedding."""

    mode: str = "mean"
    normalize: bool = False
    max_seq_length: int = 0  # 0 = not declared
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BertModelDir:
    """Where a BERT-family directory keeps its parts (``transformer`` holds config.json and the weights)."""

    root: Path
    transformer: Path
    pooling: Pooling | None


def locate(hf_dir: Path) -> BertModelDir:
    """The transformer folder and declared pooling of a BERT directory or sentence-transformers layout.

    Raises:
        InputError: no ``config.json`` where ``modules.json`` (or the directory) says the transformer is.
    """
    hf_dir = Path(hf_dir)
    transformer, pooling = hf_dir, None
    modules_file = hf_dir / "modules.json"
    if modules_file.is_file():
        modules = read_json(modules_file, "sentence-transformers modules")
        for module in modules:
            kind = str(module.get("type", ""))
            path = hf_dir / str(module.get("path", ""))
            if kind.endswith("models.Transformer"):
                transformer = path
            elif kind.endswith("models.Pooling"):
                pooling = read_pooling(path)
            elif kind.endswith("models.Normalize") and pooling is not None:
                pooling.normalize = True
        if pooling is not None:
            bert_cfg = transformer / "sentence_bert_config.json"
            if bert_cfg.is_file():
                pooling.max_seq_length = int(json.loads(bert_cfg.read_text()).get("max_seq_length", 0) or 0)
    if not (transformer / "config.json").is_file():
        raise InputError(f"{transformer}: not a Hugging Face model directory (no config.json)")
    return BertModelDir(hf_dir, transformer, pooling)


def read_pooling(pooling_dir: Path) -> Pooling:
    """The ``Pooling`` of a sentence-transformers ``1_Pooling/config.json``.

    Raises:
        InputError: a missing config, or a pooling mode lmforge does not have (e.g. weighted mean).
    """
    path = Path(pooling_dir) / "config.json"
    cfg = read_json(path, "pooling config")
    names = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
    declared = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v)
    if len(declared) != 1 or declared[0] not in names:
        raise InputError(
            f"{path}: pooling {declared} cannot be reproduced; lmforge pools with exactly one of "
            f"{', '.join(names)}"
        )
    return Pooling(mode=names[declared[0]], source=str(path))


def from_bert_config(hf_config: Any) -> ModelConfig:
    """The ``ModelConfig`` (encoder, post-norm) of a ``transformers.BertConfig``.

    Raises:
        ConfigError: a setting the encoder cannot reproduce exactly (every one is named).
    """
    problems = []
    act = getattr(hf_config, "hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        problems.append(f"hidden_act {act!r} (supported: {', '.join(_ACTIVATIONS)})")
    position = getattr(hf_config, "position_embedding_type", "absolute")
    if position != "absolute":
        problems.append(f"position_embedding_type {position!r} (only absolute)")
    if getattr(hf_config, "type_vocab_size", 2) != 2:
        problems.append(f"type_vocab_size {hf_config.type_vocab_size} (only 2)")
    if getattr(hf_config, "is_decoder", False):
        problems.append("is_decoder True (a BERT used as a decoder)")
    if hf_config.hidden_size % hf_config.num_attention_heads:
        problems.append(
            f"hidden_size {hf_config.hidden_size} not divisible by {hf_config.num_attention_heads} heads"
        )
    if problems:
        raise ConfigError(
            "model", f"{hf_config.model_type} settings lmforge cannot reproduce: " + "; ".join(problems)
        )
    return ModelConfig(
        arch="encoder",
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.max_position_embeddings,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        n_embd=hf_config.hidden_size,
        mlp=_ACTIVATIONS[act],
        mlp_hidden=hf_config.intermediate_size,
        norm="layernorm",
        pos="learned",
        tie_embeddings=True,
        dropout=float(getattr(hf_config, "hidden_dropout_prob", 0.1)),
        bias=True,
        norm_eps=float(hf_config.layer_norm_eps),
        post_norm=True,
        emb_norm=True,
    )


def _rename(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in rules:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def from_bert_state_dict(hf_sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our ``EncoderForPretraining`` keys for a BERT state dict; also the HF keys dropped on purpose.

    Raises:
        ValueError: a key that is neither mapped nor known to be dropped (the message lists them).
    """
    state, dropped, unknown = {}, [], []
    for key, value in hf_sd.items():  # AutoModel's keys, or a task model's with ``bert.``
        bare = key.removeprefix("bert.")
        ours = _rename(bare, _FROM_HF)
        if ours is not None:
            state[ours] = value
        elif _DROPPED.fullmatch(bare):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"BERT weights lmforge does not know: {', '.join(sorted(unknown)[:8])}")
    return state, dropped


def to_bert_key(key: str) -> str:
    """The Hugging Face BERT name of an ``EncoderForPretraining`` key (``cls.``/``bert.`` as in
    ``BertForMaskedLM``).

    Raises:
        ValueError: ``key`` has no BERT counterpart (e.g. an NSP head or a LoRA tensor).
    """
    hf = _rename(key, _TO_HF)
    if hf is None:
        raise ValueError(f"{key!r} has no Hugging Face BERT name")
    return hf if hf.startswith("cls.") else "bert." + hf


def build_encoder(
    cfg: ModelConfig, state: dict[str, torch.Tensor], seed: int = 0
) -> tuple[EncoderForPretraining, bool]:
    """An ``EncoderForPretraining(cfg, nsp=False)`` in eval mode with ``state`` loaded; True when the state
    had the MLM head (otherwise its fresh init, seeded, is kept).

    Raises:
        ValueError: trunk weights missing or of the wrong shape.
    """
    torch.manual_seed(seed)
    model = EncoderForPretraining(cfg, nsp=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    head_missing = [k for k in missing if k.startswith("mlm_head.")]
    trunk_missing = [k for k in missing if not k.startswith("mlm_head.")]
    if trunk_missing or unexpected:
        raise ValueError(f"BERT weights do not fit: missing {trunk_missing[:8]}, unexpected {unexpected[:8]}")
    has_head = not [k for k in head_missing if k != "mlm_head.decoder.weight"]
    return model.eval(), has_head


def grow_encoder_vocab(
    model: EncoderForPretraining, tok: Tokenizer, added: list[str]
) -> tuple[EncoderForPretraining, ModelConfig]:
    """A copy of ``model`` whose vocabulary covers every id of ``tok`` (module docstring for new rows)."""
    cfg = model.config
    size = max(cfg.vocab_size, tok.get_vocab_size(with_added_tokens=True))
    if not added or size == cfg.vocab_size:
        return model, cfg
    sources = {"<|bos|>": "[CLS]", "<|eos|>": "[SEP]", "<|pad|>": "[PAD]"}
    state = model.state_dict()
    emb, bias = state["encoder.tok_emb.weight"], state["mlm_head.bias"]
    new_emb = torch.cat([emb, emb.mean(dim=0, keepdim=True).expand(size - emb.shape[0], -1)])  # [size, D]
    new_bias = torch.cat([bias, bias.new_full((size - bias.shape[0],), float(bias.min()))])
    for token in added:
        source = tok.token_to_id(sources.get(token, ""))
        if source is not None and source < emb.shape[0]:
            new_emb[tok.token_to_id(token)] = emb[source]
    state["encoder.tok_emb.weight"], state["mlm_head.bias"] = new_emb, new_bias
    state.pop("mlm_head.decoder.weight", None)
    new_cfg = dataclasses.replace(cfg, vocab_size=size)
    grown = EncoderForPretraining(new_cfg, nsp=False)
    grown.load_state_dict(state, strict=False)
    logger.info("added %d lmforge tokens %s; vocabulary %d -> %d", len(added), added, cfg.vocab_size, size)
    return grown.eval(), new_cfg


def read_bert_tokenizer(transformer_dir: Path) -> Tokenizer:
    """BERT's ``tokenizer.json`` without its fixed padding and truncation.

    Raises:
        InputError: no ``tokenizer.json``, or it lacks ``[CLS]``, ``[SEP]``, ``[PAD]`` or ``[MASK]``.
    """
    path = Path(transformer_dir) / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{transformer_dir}: no tokenizer.json beside the BERT weights")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]") if tok.token_to_id(t) is None]
    if missing:
        raise InputError(f"{path}: not a BERT tokenizer, it lacks {', '.join(missing)}")
    return tok


def framed_batch(tok: Tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx [N, T], attention_mask [N, T])`` of ``[CLS] text [SEP]`` rows cut to ``max_len`` tokens and
    right-padded with ``[PAD]``, as sentence-transformers feeds BERT."""
    cls_id, sep_id, pad_id = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    rows = [
        [cls_id, *e.ids[: max_len - 2], sep_id] for e in tok.encode_batch(texts, add_special_tokens=False)
    ]
    T = max(len(r) for r in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
    return idx, mask


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def require_weights(model_dir: Path) -> None:
    """Raise InputError unless ``model_dir`` holds one of ``WEIGHT_FILES`` (the check every import makes
    before any work)."""
    if not any((Path(model_dir) / f).is_file() for f in WEIGHT_FILES):
        raise InputError(f"{model_dir}: no weights ({' or '.join(WEIGHT_FILES)})")


def read_bert_model(transformer_dir: Path) -> Any:
    """The ``transformers`` BERT model of a directory (fp32, eval mode), its raw weights as ``.raw_state``
    (the MLM head too, which ``AutoModel`` leaves out).

    Raises:
        UnsafePickleError: a ``pytorch_model.bin`` holding code or objects beyond tensors (refused).
        InputError: no weights file, or weights transformers cannot load.
    """
    transformer_dir = Path(transformer_dir)
    require_weights(transformer_dir)
    hf = load_weights("AutoModel", transformer_dir)
    raw = {k: v for k, v in hf.state_dict().items()}
    single = transformer_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            raw.update({k: f.get_tensor(k).float() for k in f.keys() if k.startswith("cls.predictions.")})
    hf.raw_state = raw
    return hf


@torch.no_grad()
def verify(
    model: EncoderForPretraining, hf: Any, tok: Tokenizer, texts: list[str], pooling: Pooling
) -> tuple[float, float]:
    """``(largest |hidden-state difference| over real tokens, smallest sentence-embedding cosine)`` of
    ``model`` against the ``transformers`` model on ``texts``, both pooled as ``pooling`` declares."""
    idx, mask = framed_batch(tok, texts, 128)
    ours = model.encoder(idx, mask)  # [N, T, D]
    theirs = hf(input_ids=idx, attention_mask=mask.long(), token_type_ids=torch.zeros_like(idx))
    theirs = theirs.last_hidden_state.float()  # [N, T, D]
    hidden_diff = float((ours - theirs).abs()[mask].max())
    a, b = pool(ours, mask, pooling.mode), pool(theirs, mask, pooling.mode)  # [N, D]
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    return hidden_diff, cosine


# (field, value BERT needs, what BERT lacks otherwise): an encoder exports as BERT only in BERT's form.
_BERT_NEEDS: tuple[tuple[str, Any, str], ...] = (
    ("post_norm", True, "BERT's blocks are post-norm (lmforge's default encoder is pre-norm)"),
    ("emb_norm", True, "BERT normalises the embedding sum"),
    ("norm", "layernorm", "BERT has LayerNorm only"),
    ("bias", True, "BERT's linear layers and norms have biases"),
    ("pos", "learned", "BERT has learned absolute positions only"),
    ("qk_norm", False, "BERT has no QK-norm"),
    ("n_kv_head", 0, "BERT has no grouped-query attention"),
    ("tie_embeddings", True, "BERT ties its MLM decoder to the word embeddings"),
)


def bert_gaps(cfg: ModelConfig) -> list[str]:
    """Every field of an encoder config that BERT cannot express ([] = exportable as ``BertForMaskedLM``)."""
    gaps = [f"{k}={getattr(cfg, k)!r} ({why})" for k, want, why in _BERT_NEEDS if getattr(cfg, k) != want]
    if cfg.mlp not in ("gelu", "gelu_tanh"):
        gaps.append(f"mlp={cfg.mlp!r} (BERT's MLP is GELU)")
    return gaps


def to_bert_config(cfg: ModelConfig, tok: Tokenizer) -> Any:
    """The ``transformers.BertConfig`` (``BertForMaskedLM``) of an encoder config BERT can express."""
    transformers = require_transformers()
    return transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.hidden_dim,
        hidden_act="gelu" if cfg.mlp == "gelu" else "gelu_pytorch_tanh",
        max_position_embeddings=cfg.block_size,
        type_vocab_size=2,
        layer_norm_eps=cfg.norm_eps,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=tok.token_to_id("[PAD]") or 0,
        tie_word_embeddings=True,
        architectures=["BertForMaskedLM"],
    )


def to_bert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``BertForMaskedLM`` weights of an ``EncoderForPretraining`` state dict; the tied decoder weight is
    stored once (as ``save_pretrained`` does) and an NSP head, which ``BertForMaskedLM`` lacks, is left out."""
    out = {}
    for key, value in state.items():
        if key == "mlm_head.decoder.weight" or key.startswith("nsp_head."):
            continue
        out[to_bert_key(key)] = value
    return out


def bert_tokenizer_config(tok: Tokenizer, cfg: ModelConfig) -> dict[str, Any]:
    """``tokenizer_config.json`` for ``AutoTokenizer`` over a BERT ``tokenizer.json``."""
    normalizer = json.loads(tok.to_str()).get("normalizer") or {}
    lower = bool(normalizer.get("lowercase", False))
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lower,
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "mask_token": "[MASK]",
        "unk_token": "[UNK]",
        "model_max_length": cfg.block_size,
    }
