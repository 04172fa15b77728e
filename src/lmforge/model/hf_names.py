"""Hugging Face Llama names for the decoder's weights: key mapping, state dicts and ``LlamaConfig``.

The default decoder (RoPE, RMSNorm, SwiGLU, separate projections) is the Llama architecture, so its
weights map one-to-one onto ``transformers.LlamaForCausalLM``: the names change, no tensor is permuted
or reshaped. The mapping is the plain table ``KEY_TABLE`` (as torchtune's ``convert_weights.py``):

====================================  ==================================================
lmforge ``Decoder``                   Hugging Face ``LlamaForCausalLM``
====================================  ==================================================
``tok_emb.weight``                    ``model.embed_tokens.weight``
``blocks.{i}.attn_norm.weight``       ``model.layers.{i}.input_layernorm.weight``
``blocks.{i}.attn.q_proj.{p}``        ``model.layers.{i}.self_attn.q_proj.{p}`` (k, v, o alike)
``blocks.{i}.mlp_norm.weight``        ``model.layers.{i}.post_attention_layernorm.weight``
``blocks.{i}.mlp.gate_proj.{p}``      ``model.layers.{i}.mlp.gate_proj.{p}`` (up, down alike)
``norm.weight``                       ``model.norm.weight``
``lm_head.weight``                    ``lm_head.weight``
====================================  ==================================================

``{i}`` is the layer index, ``{p}`` is ``weight`` or ``bias`` (biases exist only with ``bias=True``).

Why no permutation is needed: our RoPE (``decoder.apply_rope``) uses the half-split layout, channel j of
a head rotating with channel j + head_dim/2 by angle ``pos * theta ** (-2j / head_dim)``, and
HF Llama's ``apply_rotary_pos_emb`` computes ``x * cos + rotate_half(x) * sin`` with
``rotate_half(x) = cat(-x2, x1)`` and the same frequencies: the same function of the same channels
(tests/model/test_hf_names.py checks it numerically, and that the logits agree).

A ``ModelConfig`` maps to Llama only with ``arch="decoder"``, ``pos="rope"``, ``norm="rmsnorm"``,
``mlp="swiglu"`` and ``qk_norm=False``; ``bias=True`` maps to Llama's ``attention_bias`` and
``mlp_bias`` together. ``dropout`` is a training setting, not a weight, and is not carried over (the
exported config has ``attention_dropout=0``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig

if TYPE_CHECKING:
    import transformers

# (lmforge key, Hugging Face Llama key); {i} = layer index, {p} = weight | bias.
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("tok_emb.weight", "model.embed_tokens.weight"),
    ("blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blocks.{i}.attn.q_proj.{p}", "model.layers.{i}.self_attn.q_proj.{p}"),
    ("blocks.{i}.attn.k_proj.{p}", "model.layers.{i}.self_attn.k_proj.{p}"),
    ("blocks.{i}.attn.v_proj.{p}", "model.layers.{i}.self_attn.v_proj.{p}"),
    ("blocks.{i}.attn.o_proj.{p}", "model.layers.{i}.self_attn.o_proj.{p}"),
    ("blocks.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blocks.{i}.mlp.gate_proj.{p}", "model.layers.{i}.mlp.gate_proj.{p}"),
    ("blocks.{i}.mlp.up_proj.{p}", "model.layers.{i}.mlp.up_proj.{p}"),
    ("blocks.{i}.mlp.down_proj.{p}", "model.layers.{i}.mlp.down_proj.{p}"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)
# Non-persistent RoPE buffers that older transformers versions wrote into state dicts; never weights.
_HF_IGNORED = re.compile(r"(model\.)?(layers\.\d+\.self_attn\.)?rotary_emb\.(original_)?inv_freq")


def _pattern(template: str) -> re.Pattern[str]:
    """A template of ``KEY_TABLE`` as a regex with named groups ``i`` and ``p``."""
    regex = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(regex)


_TO_HF = tuple((_pattern(ours), hf) for ours, hf in KEY_TABLE)
_FROM_HF = tuple((_pattern(hf), ours) for ours, hf in KEY_TABLE)


def _rename(key: str, rules: tuple[tuple[re.Pattern[str], str], ...], what: str, known: list[str]) -> str:
    """Rename ``key`` by the first rule whose pattern matches it in full, or raise ValueError."""
    for pattern, template in rules:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    hint = ""
    if ".lora_" in key or ".base." in key:
        hint = " (a LoRA-wrapped state dict: fold the adapters in with lora.merged_state_dict first)"
    raise ValueError(f"{key!r} is not {what}{hint}; known keys: {', '.join(known)}")


def to_hf_key(key: str) -> str:
    """The Hugging Face ``LlamaForCausalLM`` name of a ``Decoder`` state-dict key.

    Raises:
        ValueError: ``key`` has no Llama counterpart (e.g. ``pos_emb.weight``, a QK-norm gain or a LoRA
            tensor); the message lists the keys that map.
    """
    return _rename(key, _TO_HF, "a Decoder key with a Hugging Face Llama name", [o for o, _ in KEY_TABLE])


def from_hf_key(key: str) -> str:
    """The ``Decoder`` state-dict key of a Hugging Face ``LlamaForCausalLM`` key (inverse of ``to_hf_key``).

    Raises:
        ValueError: ``key`` is not a Llama weight this decoder has.
    """
    return _rename(key, _FROM_HF, "a Hugging Face Llama key lmforge maps", [h for _, h in KEY_TABLE])


def check_llama_config(cfg: ModelConfig) -> None:
    """Raise ``ConfigError(field, message)`` unless ``cfg`` describes a model Llama can represent.

    Llama is ``arch="decoder"``, ``pos="rope"``, ``norm="rmsnorm"``, ``mlp="swiglu"``, no QK-norm;
    biases are allowed (Llama's ``attention_bias`` + ``mlp_bias``).
    """
    cfg.validate()
    wanted = (
        ("arch", "decoder"),
        ("pos", "rope"),
        ("norm", "rmsnorm"),
        ("mlp", "swiglu"),
        ("qk_norm", False),
    )
    for key, value in wanted:
        if getattr(cfg, key) != value:
            raise ConfigError(
                key,
                f"{getattr(cfg, key)!r} has no Hugging Face Llama equivalent; Llama needs {key}={value!r} "
                "(arch=decoder, pos=rope, norm=rmsnorm, mlp=swiglu, qk_norm=false)",
            )
    if cfg.vocab_size <= 0:
        raise ConfigError("vocab_size", f"must be > 0 to map weights, got {cfg.vocab_size}")


def decoder_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of a Llama-compatible ``Decoder(cfg)`` with its shape (``lm_head`` included).

    D n_embd, H query heads, K key/value heads, Q head_dim, F hidden_dim, V vocab_size.
    """
    D, Q, F, V = cfg.n_embd, cfg.head_dim, cfg.hidden_dim, cfg.vocab_size
    HQ, KQ = cfg.n_head * Q, cfg.kv_heads * Q
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (V, D)}
    for i in range(cfg.n_layer):
        b = f"blocks.{i}"
        linears = {
            "attn.q_proj": (HQ, D),
            "attn.k_proj": (KQ, D),
            "attn.v_proj": (KQ, D),
            "attn.o_proj": (D, HQ),
            "mlp.gate_proj": (F, D),
            "mlp.up_proj": (F, D),
            "mlp.down_proj": (D, F),
        }
        shapes[f"{b}.attn_norm.weight"] = (D,)
        shapes[f"{b}.mlp_norm.weight"] = (D,)
        for name, shape in linears.items():
            shapes[f"{b}.{name}.weight"] = shape
            if cfg.bias:
                shapes[f"{b}.{name}.bias"] = shape[:1]
    shapes["norm.weight"] = (D,)
    shapes["lm_head.weight"] = (V, D)
    return shapes


def _check_keys(state: dict[str, torch.Tensor], cfg: ModelConfig, naming: str) -> None:
    """Raise ValueError unless ``state`` (our names) has exactly the keys and shapes of ``Decoder(cfg)``."""
    shapes = decoder_shapes(cfg)
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"{naming} state dict does not fit the config: missing {missing}, unexpected {unexpected}"
        )
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(
                f"{naming} state dict: {key} has shape {tuple(state[key].shape)}, the config needs {shape}"
            )


def _tied_head(embedding: torch.Tensor, head: torch.Tensor | None, head_key: str, emb_key: str) -> None:
    """Raise ValueError if a given output head differs from the embedding it should be tied to."""
    if head is None or head is embedding:
        return
    if head.shape != embedding.shape or not torch.equal(head, embedding):
        raise ValueError(
            f"tie_embeddings=True but {head_key} differs from {emb_key}; the weights are untied, so set "
            "tie_embeddings=False"
        )


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``Decoder`` state dict under Hugging Face ``LlamaForCausalLM`` names (the same tensors, no copies).

    With tied embeddings ``lm_head.weight`` may be absent from ``state_dict`` (a checkpoint stores it
    once); the result always holds it, as the same tensor as ``model.embed_tokens.weight``, like the HF
    model's own ``state_dict()``, so ``LlamaForCausalLM.load_state_dict`` accepts it strictly. Drop that
    key before writing a safetensors file (``save_pretrained`` does).

    Raises:
        ConfigError: ``cfg`` is not a Llama architecture (the key names the field).
        ValueError: keys or shapes that do not fit ``cfg`` (e.g. a LoRA-wrapped state dict), or
            ``tie_embeddings=True`` with an ``lm_head.weight`` that differs from ``tok_emb.weight``.
    """
    check_llama_config(cfg)
    state = dict(state_dict)
    if cfg.tie_embeddings and "tok_emb.weight" in state:
        _tied_head(state["tok_emb.weight"], state.get("lm_head.weight"), "lm_head.weight", "tok_emb.weight")
        state["lm_head.weight"] = state["tok_emb.weight"]
    _check_keys(state, cfg, "lmforge")
    out = {to_hf_key(key): value for key, value in state.items()}
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def from_hf_state_dict(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face ``LlamaForCausalLM`` state dict under ``Decoder`` names (inverse of ``to_hf_state_dict``).

    RoPE ``inv_freq`` buffers are ignored. With tied embeddings ``lm_head.weight`` may be absent; the
    result holds it as the same tensor as ``tok_emb.weight``, so ``Decoder(cfg).load_state_dict`` accepts
    it strictly.

    Raises:
        ConfigError: ``cfg`` is not a Llama architecture (the key names the field).
        ValueError: a key that is not a Llama weight, keys or shapes that do not fit ``cfg``, or a tied
            config with an ``lm_head.weight`` that differs from ``model.embed_tokens.weight``.
    """
    check_llama_config(cfg)
    hf = {key: value for key, value in hf_sd.items() if not _HF_IGNORED.fullmatch(key)}
    emb_key = "model.embed_tokens.weight"
    if cfg.tie_embeddings and emb_key in hf:
        _tied_head(hf[emb_key], hf.pop("lm_head.weight", None), "lm_head.weight", emb_key)
    state = {from_hf_key(key): value for key, value in hf.items()}
    if cfg.tie_embeddings and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    _check_keys(state, cfg, "Hugging Face")
    return state


def to_llama_config(cfg: ModelConfig, **overrides: Any) -> transformers.LlamaConfig:
    """The ``transformers.LlamaConfig`` of the same model; ``overrides`` are passed on (e.g. token ids).

    Token ids default to lmforge's special tokens: ``<|bos|>`` 0, ``<|eos|>`` 1, ``<|pad|>`` 2.

    Raises:
        ConfigError: ``cfg`` is not a Llama architecture (the key names the field).
        ImportError: ``transformers`` is not installed (``pip install lmforge[hf]``).
    """
    check_llama_config(cfg)
    import transformers

    fields: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "architectures": ["LlamaForCausalLM"],
    }
    fields.update(overrides)
    return transformers.LlamaConfig(**fields)
