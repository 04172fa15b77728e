"""Hugging Face Qwen2, Qwen3, Mistral and Gemma: one table per family, mapping configs and weights both ways.

Each family is a Llama-shaped decoder: the config fields of ``hf_names.LLAMA_SHAPED_FIELDS`` mean the
same, and the weights carry the Llama names of ``hf_names.KEY_TABLE`` (Qwen3 adds its QK-norm gains).
What sets a family apart is a ``Family`` row: the ``ModelConfig`` fields it fixes, the activation its
MLP uses, the Hugging Face switches that must be off, and how it stores norm gains.

=========  ==================================================  =========================================
family     fixes (``ModelConfig``)                             notes
=========  ==================================================  =========================================
qwen2      SwiGLU, ``qkv_bias=True`` (o_proj has no bias)      sliding-window layers cap ``block_size``
qwen3      SwiGLU, ``qk_norm=True`` (RMSNorm per head, before  ``attention_bias`` refused (it biases
           RoPE, eps = ``rms_norm_eps``)                       o_proj too); sliding layers as qwen2
mistral    SwiGLU (the Llama architecture)                     ``sliding_window`` caps ``block_size``;
                                                               exported as Llama
gemma      GeGLU (tanh GELU), ``scale_emb=True``               RMSNorm is ``x * (1 + w)``: gains are
                                                               stored as ``w = ours - 1``
=========  ==================================================  =========================================

Every family also fixes ``pos="rope"``, ``norm="rmsnorm"``, ``bias=False`` and the other switches off.

Sliding windows: a key ``j`` is visible from query ``i`` when ``i - j < sliding_window`` (transformers'
``sliding_window_overlay``), so with ``block_size <= sliding_window`` the window never hides a key and
the function is the full causal attention the decoder computes; import caps ``block_size`` there.

Export picks the family a config needs (``export_family``): ``qk_norm`` → Qwen3, ``qkv_bias`` → Qwen2,
``scale_emb`` or ``mlp="geglu"`` → Gemma, anything else → Llama (``hf_names``). A config the chosen
family cannot express is refused with every field named.

Relatives that look alike but compute something else (Gemma 2 and 3: logit soft-capping, four norms a
block, alternating local attention) are refused by name (``relative_problems``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.hf_names import (
    _HF_IGNORED,
    KEY_TABLE,
    _check_keys,
    _decoder_state_shapes,
    _pattern,
    _refuse,
    _rename,
    _tied_head,
    check_llama_config,
    from_llama_shaped_config,
    llama_shaped_hf_fields,
    to_hf_state_dict,
    to_llama_config,
)

if TYPE_CHECKING:
    import transformers

logger = logging.getLogger(__name__)

# The switches every Llama-shaped family fixes; each family changes a few.
_LLAMA_SHAPE: dict[str, Any] = {
    "arch": "decoder",
    "pos": "rope",
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "bias": False,
    "qkv_bias": False,
    "qk_norm": False,
    "scale_emb": False,
}


@dataclass(frozen=True)
class Family:
    """One Llama-shaped Hugging Face family.

    Attributes:
        model_type: ``config.json``'s ``model_type``; ``label``: its name in messages.
        config_class / architecture: the transformers config class and ``architectures`` entry.
        fixed: every ``ModelConfig`` switch the family fixes (import sets them, export requires them).
        acts: the ``hidden_act`` values that are its MLP's activation (export writes the first).
        off: Hugging Face switches that must be unset or false, with what lmforge lacks otherwise.
        hf_fixed: further Hugging Face fields export writes.
        sliding: where ``sliding_window`` applies: ``"layer_types"`` (the layers so marked), ``"all"``
            (every layer), ``""`` (the family has none).
        gain_offset: stored norm gain = ours - ``gain_offset`` (Gemma's ``x * (1 + w)``).
    """

    model_type: str
    label: str
    config_class: str
    architecture: str
    fixed: dict[str, Any]
    acts: tuple[str, ...] = ("silu",)
    off: tuple[tuple[str, str], ...] = ()
    hf_fixed: dict[str, Any] = field(default_factory=dict)
    sliding: str = ""
    gain_offset: float = 0.0


FAMILIES: dict[str, Family] = {
    "qwen2": Family(
        "qwen2",
        "Qwen2",
        "Qwen2Config",
        "Qwen2ForCausalLM",
        fixed={**_LLAMA_SHAPE, "qkv_bias": True},
        hf_fixed={"use_sliding_window": False},
        sliding="layer_types",
    ),
    "qwen3": Family(
        "qwen3",
        "Qwen3",
        "Qwen3Config",
        "Qwen3ForCausalLM",
        fixed={**_LLAMA_SHAPE, "qk_norm": True},
        off=(("attention_bias", "it biases o_proj too; lmforge biases q/k/v alone or every linear layer"),),
        hf_fixed={"attention_bias": False, "use_sliding_window": False},
        sliding="layer_types",
    ),
    "mistral": Family(
        "mistral",
        "Mistral",
        "MistralConfig",
        "MistralForCausalLM",
        fixed=dict(_LLAMA_SHAPE),
        sliding="all",  # exported as Llama: the same config without the window
    ),
    "gemma": Family(
        "gemma",
        "Gemma",
        "GemmaConfig",
        "GemmaForCausalLM",
        fixed={**_LLAMA_SHAPE, "mlp": "geglu", "scale_emb": True},
        acts=("gelu_pytorch_tanh", "gelu_new"),
        off=(
            ("attention_bias", "it biases q/k/v/o but not the MLP; lmforge's bias covers both"),
            ("use_bidirectional_attention", "lmforge's decoder is causal"),
        ),
        hf_fixed={"attention_bias": False},
        gain_offset=1.0,
    ),
}

# Relatives transformers knows that lmforge cannot compute. The refusal names each of these fields the
# config sets, with what it does, then what every model of the type has (``RELATIVES``).
_RELATIVE_FIELDS = (
    ("attn_logit_softcapping", "soft-capping of attention logits"),
    ("final_logit_softcapping", "soft-capping of the output logits"),
    ("query_pre_attn_scalar", "attention scaled by 1/sqrt(query_pre_attn_scalar), not 1/sqrt(head_dim)"),
    ("sliding_window", "alternating local (sliding-window) attention layers"),
    ("rope_local_base_freq", "a second RoPE base for the local layers"),
)
_FOUR_NORMS = "four norms per block (input, post-attention, pre- and post-feedforward; lmforge has two)"
RELATIVES: dict[str, str] = {
    "gemma2": _FOUR_NORMS,
    "gemma3_text": _FOUR_NORMS,
    "gemma3": f"a vision tower, and {_FOUR_NORMS}",
}

# Weights: Llama's names, plus the QK-norm gains of Qwen3. {i} = layer index, {p} = weight | bias.
FAMILY_KEY_TABLE: tuple[tuple[str, str], ...] = (
    *KEY_TABLE,
    ("blocks.{i}.attn.q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
    ("blocks.{i}.attn.k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
)
_TO_HF = tuple((_pattern(ours), hf) for ours, hf in FAMILY_KEY_TABLE)
_FROM_HF = tuple((_pattern(hf), ours) for ours, hf in FAMILY_KEY_TABLE)
# The block and final RMSNorm gains (Gemma stores them as w - 1); never the QK-norm gains.
_GAIN = re.compile(r"(blocks\.\d+\.(attn|mlp)_norm\.|norm\.)weight")
# Which family export writes, by the first switch that needs one: (field, value, model_type).
_EXPORT_MARKS: tuple[tuple[str, Any, str], ...] = (
    ("qk_norm", True, "qwen3"),
    ("qkv_bias", True, "qwen2"),
    ("scale_emb", True, "gemma"),
    ("mlp", "geglu", "gemma"),
)


def relative_problems(model_type: str | None, raw: dict[str, Any]) -> list[str]:
    """What makes ``model_type`` (a relative in ``RELATIVES``) differ from lmforge's decoder, naming each
    field its raw ``config.json`` sets; [] for any other type."""
    if model_type not in RELATIVES:
        return []
    raw = raw.get("text_config") or raw
    problems = [
        f"{name}={raw[name]!r} ({what})" for name, what in _RELATIVE_FIELDS if raw.get(name) is not None
    ]
    return [*problems, RELATIVES[model_type]]


def _window(hf_config: Any, family: Family, problems: list[str]) -> int | None:
    """The sliding window that applies to some layer of ``hf_config`` (None if none); odd layer types
    are added to ``problems``."""
    window = getattr(hf_config, "sliding_window", None)
    if family.sliding == "layer_types":
        types = list(getattr(hf_config, "layer_types", None) or [])
        odd = sorted(set(types) - {"full_attention", "sliding_attention"})
        if odd:
            problems.append(f"layer_types {odd} (lmforge has full causal attention only)")
        return window if window is not None and "sliding_attention" in types else None
    return window if family.sliding == "all" else None


def from_family_config(hf_config: Any) -> ModelConfig:
    """The ``ModelConfig`` of a Qwen2, Qwen3, Mistral or Gemma config (``FAMILIES[model_type]``).

    A sliding window smaller than ``max_position_embeddings`` caps ``block_size`` (module docstring).

    Raises:
        ConfigError: a setting the decoder cannot reproduce exactly (RoPE scaling, a head_dim other than
            hidden_size // num_attention_heads, another activation, a switch of ``Family.off``, unknown
            layer types); the message names each.
        KeyError: ``hf_config.model_type`` is not a key of ``FAMILIES``.
    """
    family = FAMILIES[hf_config.model_type]
    fields, problems = from_llama_shaped_config(hf_config)
    act = getattr(hf_config, "hidden_act", None)
    if act not in family.acts:
        problems.append(
            f"hidden_act {act!r} ({family.label}'s MLP needs {' or '.join(map(repr, family.acts))})"
        )
    for name, lack in family.off:
        if getattr(hf_config, name, None):
            problems.append(f"{name}={getattr(hf_config, name)!r} ({lack})")
    window = _window(hf_config, family, problems)
    _refuse(f"{family.label} model", problems)
    if window is not None and window < fields["block_size"]:
        logger.info(
            "%s: sliding_window %d < max_position_embeddings %d: block_size capped at %d, so the window "
            "never applies",
            family.label,
            window,
            fields["block_size"],
            window,
        )
        fields["block_size"] = window
    return ModelConfig(**{**fields, **family.fixed})


def export_family(cfg: ModelConfig) -> str:
    """The ``model_type`` export writes ``cfg`` as: qwen3, qwen2 or gemma by the first switch that needs
    one (``_EXPORT_MARKS``), else llama. The family may still lack something (``check_family``)."""
    return next((family for key, value, family in _EXPORT_MARKS if getattr(cfg, key) == value), "llama")


def check_family(cfg: ModelConfig) -> str:
    """Return ``export_family(cfg)``, or raise ``ConfigError(field, message)`` naming every field that
    family cannot express (for Llama, ``hf_names.check_llama_config``'s message)."""
    cfg.validate()
    model_type = export_family(cfg)
    if model_type == "llama":
        check_llama_config(cfg)
        return model_type
    family = FAMILIES[model_type]
    gaps = [
        (key, f"{key}={getattr(cfg, key)!r} ({family.label} needs {key}={value!r})")
        for key, value in family.fixed.items()
        if getattr(cfg, key) != value
    ]
    if gaps:
        mark = next(f"{k}={v!r}" for k, v, t in _EXPORT_MARKS if t == model_type and getattr(cfg, k) == v)
        raise ConfigError(
            gaps[0][0],
            f"no Hugging Face family expresses this config; as {family.label} (chosen for {mark}): "
            + "; ".join(message for _, message in gaps),
        )
    return model_type


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``Decoder(cfg)`` with its shape."""
    return {key: tuple(value.shape) for key, value in _decoder_state_shapes(cfg).items()}


def to_family_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``Decoder`` state dict under the names of ``check_family(cfg)``'s ``*ForCausalLM``.

    Gemma's norm gains are unfolded (``w - 1``, new tensors); every other tensor is passed as it is. With
    tied embeddings the result holds ``lm_head.weight`` as the embedding tensor (``to_hf_state_dict``).

    Raises:
        ConfigError: no family expresses ``cfg`` (the key names the first field).
        ValueError: keys or shapes that do not fit ``cfg``, or an untied head with a tied config.
    """
    model_type = check_family(cfg)
    if model_type == "llama":
        return to_hf_state_dict(state_dict, cfg)
    family = FAMILIES[model_type]
    state = dict(state_dict)
    if cfg.tie_embeddings and "tok_emb.weight" in state:
        _tied_head(state["tok_emb.weight"], state.get("lm_head.weight"), "lm_head.weight", "tok_emb.weight")
        state["lm_head.weight"] = state["tok_emb.weight"]
    _check_keys(state, cfg, "lmforge", _shapes(cfg))
    known = [ours for ours, _ in FAMILY_KEY_TABLE]
    out = {}
    for key, value in state.items():
        unfold = family.gain_offset and _GAIN.fullmatch(key)
        out[_rename(key, _TO_HF, f"a Decoder key with a {family.label} name", known)] = (
            value - family.gain_offset if unfold else value
        )
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def from_family_state_dict(
    hf_sd: dict[str, torch.Tensor], cfg: ModelConfig, model_type: str
) -> dict[str, torch.Tensor]:
    """A Qwen2, Qwen3, Mistral or Gemma state dict under ``Decoder`` names, for ``cfg`` (from
    ``from_family_config``). Gemma's norm gains are folded (``w + 1``); RoPE buffers are ignored.

    Raises:
        ValueError: a key the family does not have, keys or shapes that do not fit ``cfg``, or a tied
            config with an ``lm_head.weight`` that differs from ``model.embed_tokens.weight``.
    """
    family = FAMILIES[model_type]
    hf = {key: value for key, value in hf_sd.items() if not _HF_IGNORED.fullmatch(key)}
    emb_key = "model.embed_tokens.weight"
    if cfg.tie_embeddings and emb_key in hf:
        _tied_head(hf[emb_key], hf.pop("lm_head.weight", None), "lm_head.weight", emb_key)
    known = [hf_key for _, hf_key in FAMILY_KEY_TABLE]
    state = {}
    for key, value in hf.items():
        ours = _rename(key, _FROM_HF, f"a Hugging Face {family.label} key lmforge maps", known)
        state[ours] = value + family.gain_offset if family.gain_offset and _GAIN.fullmatch(ours) else value
    if cfg.tie_embeddings and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    _check_keys(state, cfg, f"Hugging Face {family.label}", _shapes(cfg))
    return state


def to_family_config(cfg: ModelConfig, **overrides: Any) -> transformers.PretrainedConfig:
    """The transformers config of ``check_family(cfg)`` for the same model; ``overrides`` are passed on.

    Raises:
        ConfigError: no family expresses ``cfg`` (the key names the first field).
        ImportError: ``transformers`` is not installed (``pip install lmforge[hf]``).
    """
    model_type = check_family(cfg)
    if model_type == "llama":
        return to_llama_config(cfg, **overrides)
    import transformers  # heavy optional extra (lmforge[hf])

    family = FAMILIES[model_type]
    fields = llama_shaped_hf_fields(cfg)
    fields.update(hidden_act=family.acts[0], architectures=[family.architecture], **family.hf_fixed)
    fields.update(overrides)
    return getattr(transformers, family.config_class)(**fields)
