"""Hugging Face names for the decoder's weights: Llama (both ways) and GPT-2 (import), keys and configs.

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
exported config has ``attention_dropout=0``). ``llama_gaps`` lists every field that does not fit;
``from_llama_config`` maps a ``LlamaConfig`` back, refusing what the decoder cannot reproduce. The
config fields every Llama-shaped family shares are one table, ``LLAMA_SHAPED_FIELDS``; Qwen2, Qwen3,
Mistral and Gemma reuse it and ``KEY_TABLE`` (interop/hf_families.py).

GPT-2 (``GPT2_KEY_TABLE``, import only) is our decoder with ``pos="learned"``, ``norm="layernorm"``,
``bias=True`` and ``mlp="gelu_tanh"`` (GPT-2's ``gelu_new``): pre-norm blocks, a final norm, a tied
head. Its ``Conv1D`` weights are stored ``[in, out]`` and transposed; the fused ``c_attn`` is split
into q, k, v (``from_gpt2_state_dict``, ``from_gpt2_config``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder

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


# (field, the value Llama needs, what Llama lacks otherwise): every switch a Llama cannot express.
_LLAMA_NEEDS: tuple[tuple[str, Any, str], ...] = (
    ("arch", "decoder", "Llama is a causal decoder; encoders have no LlamaForCausalLM form"),
    ("pos", "rope", "Llama has only rotary positions (no learned, sinusoidal or ALiBi positions)"),
    ("norm", "rmsnorm", "Llama has only RMSNorm (no LayerNorm)"),
    ("mlp", "swiglu", "Llama has only the SwiGLU MLP (no GELU or squared-ReLU MLP)"),
    ("qk_norm", False, "Llama has no QK-norm"),
    ("qkv_bias", False, "Llama has no q/k/v-only biases (Qwen2 has)"),
    ("scale_emb", False, "Llama does not scale its embeddings (Gemma does)"),
)


def llama_gaps(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Every ``(field, message)`` for which ``cfg`` needs something Hugging Face Llama lacks; [] if none."""
    gaps = [
        (key, f"{key}={getattr(cfg, key)!r}: {lack} (needs {key}={value!r})")
        for key, value, lack in _LLAMA_NEEDS
        if getattr(cfg, key) != value
    ]
    if cfg.vocab_size <= 0:
        gaps.append(("vocab_size", f"vocab_size must be > 0 to map weights, got {cfg.vocab_size}"))
    return gaps


def check_llama_config(cfg: ModelConfig) -> None:
    """Raise ``ConfigError(field, message)`` unless ``cfg`` describes a model Llama can represent.

    Llama is ``arch="decoder"``, ``pos="rope"``, ``norm="rmsnorm"``, ``mlp="swiglu"``, no QK-norm;
    biases are allowed (Llama's ``attention_bias`` + ``mlp_bias``). The message names every field that
    does not fit; the error's key is the first.
    """
    cfg.validate()
    gaps = llama_gaps(cfg)
    if gaps:
        raise ConfigError(
            gaps[0][0],
            "no Hugging Face Llama equivalent: " + "; ".join(message for _, message in gaps),
        )


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


def _check_keys(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    naming: str,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise ValueError unless ``state`` (our names) has exactly the keys and shapes of ``Decoder(cfg)``
    (``shapes``: those keys and shapes when given, else the Llama-compatible ``decoder_shapes(cfg)``)."""
    shapes = decoder_shapes(cfg) if shapes is None else shapes
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


# (Hugging Face config field, ModelConfig field, what export writes): the fields every Llama-shaped family
# (Llama, Qwen2, Qwen3, Mistral, Gemma) names and means alike. Export writes the derived value where the
# input field may be 0 for "default" (kv_heads, hidden_dim).
LLAMA_SHAPED_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("vocab_size", "vocab_size", "vocab_size"),
    ("hidden_size", "n_embd", "n_embd"),
    ("intermediate_size", "mlp_hidden", "hidden_dim"),
    ("num_hidden_layers", "n_layer", "n_layer"),
    ("num_attention_heads", "n_head", "n_head"),
    ("num_key_value_heads", "n_kv_head", "kv_heads"),
    ("max_position_embeddings", "block_size", "block_size"),
    ("rms_norm_eps", "norm_eps", "norm_eps"),
    ("tie_word_embeddings", "tie_embeddings", "tie_embeddings"),
)


def llama_shaped_hf_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config fields a Llama-shaped family shares, for ``cfg`` (``LLAMA_SHAPED_FIELDS``,
    ``head_dim``, plain RoPE at ``rope_theta``, no attention dropout, lmforge's token ids 0 / 1 / 2)."""
    fields: dict[str, Any] = {hf: getattr(cfg, attr) for hf, _, attr in LLAMA_SHAPED_FIELDS}
    fields.update(
        head_dim=cfg.head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return fields


def from_llama_shaped_config(hf_config: Any) -> tuple[dict[str, Any], list[str]]:
    """The ``ModelConfig`` fields of a Llama-shaped Hugging Face config (``LLAMA_SHAPED_FIELDS``, RoPE
    base, ``pos="rope"``, ``norm="rmsnorm"``), and what of it the decoder cannot reproduce: RoPE scaling,
    a ``head_dim`` other than hidden_size // num_attention_heads."""
    problems = []
    rope = dict(_hf_value(hf_config, "rope_parameters", "rope_scaling", default={}) or {})
    theta = rope.get("rope_theta", _hf_value(hf_config, "rope_theta", default=10000.0))
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope scaling {rope} (lmforge has plain RoPE only)")
    hidden, heads = hf_config.hidden_size, hf_config.num_attention_heads
    head_dim = _hf_value(hf_config, "head_dim", default=hidden // heads)
    if head_dim * heads != hidden:
        problems.append(f"head_dim {head_dim} * {heads} heads != hidden_size {hidden}")
    fields = {ours: getattr(hf_config, hf, None) for hf, ours, _ in LLAMA_SHAPED_FIELDS}
    fields.update(
        n_kv_head=fields["n_kv_head"] or heads,
        norm_eps=float(fields["norm_eps"]),
        tie_embeddings=bool(fields["tie_embeddings"]),
        pos="rope",
        norm="rmsnorm",
        rope_theta=float(theta),
    )
    return fields, problems


def to_llama_config(cfg: ModelConfig, **overrides: Any) -> transformers.LlamaConfig:
    """The ``transformers.LlamaConfig`` of the same model; ``overrides`` are passed on (e.g. token ids).

    Token ids default to lmforge's special tokens: ``<|bos|>`` 0, ``<|eos|>`` 1, ``<|pad|>`` 2.

    Raises:
        ConfigError: ``cfg`` is not a Llama architecture (the key names the field).
        ImportError: ``transformers`` is not installed (``pip install lmforge[hf]``).
    """
    check_llama_config(cfg)
    import transformers  # heavy optional extra (lmforge[hf])

    fields = llama_shaped_hf_fields(cfg)
    fields.update(
        hidden_act="silu", attention_bias=cfg.bias, mlp_bias=cfg.bias, architectures=["LlamaForCausalLM"]
    )
    fields.update(overrides)
    return transformers.LlamaConfig(**fields)


def _hf_value(hf_config: Any, *names: str, default: Any = None) -> Any:
    """The first attribute of ``hf_config`` among ``names`` that is set (not None), else ``default``."""
    for name in names:
        value = getattr(hf_config, name, None)
        if value is not None:
            return value
    return default


def _refuse(model_type: str, problems: list[str]) -> None:
    """Raise ConfigError naming every setting of a Hugging Face config lmforge cannot reproduce."""
    if problems:
        raise ConfigError("model", f"cannot import this {model_type} exactly: " + "; ".join(problems))


def from_llama_config(hf_config: Any) -> ModelConfig:
    """The ``ModelConfig`` of a ``transformers.LlamaConfig`` (inverse of ``to_llama_config``).

    Raises:
        ConfigError: a setting the decoder cannot reproduce exactly (RoPE scaling, a head_dim other than
            hidden_size // num_attention_heads, an activation other than SiLU, attention and MLP biases
            that differ, tensor-parallel ``pretraining_tp`` > 1); the message names each.
    """
    fields, problems = from_llama_shaped_config(hf_config)
    if hf_config.hidden_act != "silu":
        problems.append(f"hidden_act {hf_config.hidden_act!r} (SwiGLU needs 'silu')")
    attention_bias = bool(getattr(hf_config, "attention_bias", False))
    mlp_bias = bool(getattr(hf_config, "mlp_bias", False))
    if attention_bias != mlp_bias:
        problems.append(
            f"attention_bias={attention_bias} but mlp_bias={mlp_bias} (lmforge has one bias switch)"
        )
    if _hf_value(hf_config, "pretraining_tp", default=1) != 1:
        problems.append(f"pretraining_tp={hf_config.pretraining_tp}")
    _refuse("Llama model", problems)
    return ModelConfig(**fields, mlp="swiglu", bias=attention_bias)


# GPT-2 activation names → our MLP kinds ("gelu_new" and "gelu_pytorch_tanh" are the tanh approximation).
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def from_gpt2_config(hf_config: Any) -> ModelConfig:
    """The ``ModelConfig`` of a ``transformers.GPT2Config``: learned positions, LayerNorm with biases,
    biases in every linear layer, a GELU MLP, pre-norm blocks with a final norm (as our decoder).

    Raises:
        ConfigError: a setting the decoder cannot reproduce exactly (an activation other than GELU,
            ``scale_attn_weights=False``, ``scale_attn_by_inverse_layer_idx``, cross-attention); the
            message names each.
    """
    problems = []
    act = hf_config.activation_function
    if act not in _GPT2_ACTIVATIONS:
        problems.append(f"activation_function {act!r} (supported: {', '.join(_GPT2_ACTIVATIONS)})")
    if not getattr(hf_config, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False (lmforge scales attention by 1/sqrt(head_dim))")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True")
    if getattr(hf_config, "add_cross_attention", False):
        problems.append("add_cross_attention=True")
    _refuse("GPT-2 model", problems)
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        mlp=_GPT2_ACTIVATIONS[act],
        mlp_hidden=hf_config.n_inner or 4 * hf_config.n_embd,
        norm="layernorm",
        pos="learned",
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
        bias=True,
        norm_eps=float(hf_config.layer_norm_epsilon),
    )


# GPT-2 (``GPT2LMHeadModel``) → Decoder, {i} = layer, {p} = weight | bias. GPT-2's linear layers are
# ``Conv1D`` (y = x @ W + b, W stored [in, out]), so every projection weight is transposed, and the
# fused ``c_attn`` [D, 3D] is split into q, k, v (in that order) along its output dimension.
GPT2_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("transformer.wte.weight", "tok_emb.weight"),
    ("transformer.wpe.weight", "pos_emb.weight"),
    ("transformer.h.{i}.ln_1.{p}", "blocks.{i}.attn_norm.{p}"),
    ("transformer.h.{i}.attn.c_attn.{p}", "blocks.{i}.attn.{q,k,v}_proj.{p}"),
    ("transformer.h.{i}.attn.c_proj.{p}", "blocks.{i}.attn.o_proj.{p}"),
    ("transformer.h.{i}.ln_2.{p}", "blocks.{i}.mlp_norm.{p}"),
    ("transformer.h.{i}.mlp.c_fc.{p}", "blocks.{i}.mlp.up_proj.{p}"),
    ("transformer.h.{i}.mlp.c_proj.{p}", "blocks.{i}.mlp.down_proj.{p}"),
    ("transformer.ln_f.{p}", "norm.{p}"),
    ("lm_head.weight", "lm_head.weight"),
)
_GPT2_RULES = tuple((_pattern(hf), ours) for hf, ours in GPT2_KEY_TABLE)
# The causal-mask buffers older transformers versions saved with GPT-2 weights; never weights.
_GPT2_IGNORED = re.compile(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias")


def from_gpt2_state_dict(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face ``GPT2LMHeadModel`` (or ``GPT2Model``) state dict under ``Decoder`` names.

    Conv1D weights are transposed into ``nn.Linear``'s ``[out, in]``; ``c_attn`` is split into q, k, v.
    With tied embeddings the result's ``lm_head.weight`` is ``tok_emb.weight``.

    Raises:
        ValueError: a key that is not a GPT-2 weight, keys or shapes that do not fit ``cfg``, or a tied
            config with an ``lm_head.weight`` that differs from ``transformer.wte.weight``.
    """
    state: dict[str, torch.Tensor] = {}
    D = cfg.n_embd
    for key, value in hf_sd.items():
        if _GPT2_IGNORED.fullmatch(key):
            continue
        full = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        found = next(((m, t) for p, t in _GPT2_RULES if (m := p.fullmatch(full))), None)
        if found is None:
            known = ", ".join(hf for hf, _ in GPT2_KEY_TABLE)
            raise ValueError(f"{key!r} is not a GPT-2 weight lmforge maps; known keys: {known}")
        match, template = found
        groups = match.groupdict()
        conv = ".c_attn." in full or ".c_proj." in full or ".c_fc." in full
        tensor = value.t() if conv and groups.get("p") == "weight" else value
        if "{q,k,v}" in template:
            if tensor.shape[0] != 3 * D:
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}; GPT-2 c_attn needs 3 * n_embd = {3 * D}"
                )
            for name, part in zip("qkv", tensor.split(D, dim=0)):
                state[template.replace("{q,k,v}", name).format(**groups)] = part.contiguous()
        else:
            state[template.format(**groups)] = tensor.contiguous() if conv else tensor
    if cfg.tie_embeddings and "tok_emb.weight" in state:
        _tied_head(
            state["tok_emb.weight"], state.get("lm_head.weight"), "lm_head.weight", "transformer.wte.weight"
        )
        state["lm_head.weight"] = state["tok_emb.weight"]
    expected = {name: tuple(p.shape) for name, p in _decoder_state_shapes(cfg).items()}
    _check_keys(state, cfg, "GPT-2", expected)
    return state


def _decoder_state_shapes(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Every state-dict tensor of ``Decoder(cfg)`` on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return Decoder(cfg).state_dict()
