"""ModelConfig: the input fields that define a decoder, their validation, and depth-driven size presets.

Only input fields are stored (``to_dict``) together with a format version; derived values (``head_dim``,
``kv_heads``, ``hidden_dim``) are properties, recomputed on load, so a checkpoint never carries a derived
value that a later version would have to reject.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import above
from lmforge.errors import ConfigError

# the linear layers LoRA adapts by default (every projection of a block, Hugging Face names); here, not in
# model/lora.py, so the finetune lora stage's options are defined without importing torch
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FORMAT_VERSION = 1
MLP_CHOICES = ("swiglu", "gelu", "relu2", "gelu_tanh", "geglu")
NORM_CHOICES = ("rmsnorm", "layernorm")
POS_CHOICES = ("rope", "learned", "sinusoidal", "alibi")
ARCH_CHOICES = ("decoder", "encoder")

# Python types accepted for each annotated field type (annotations are strings under postponed evaluation).
_ACCEPTED_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}


@dataclass
class ModelConfig:
    """Shape and architectural switches of a ``Decoder``; each field's ``help`` is its one-line doc."""

    arch: str = field(
        default="decoder", metadata={"help": "decoder (causal LM) | encoder (bidirectional, BERT-style MLM)"}
    )
    vocab_size: int = field(
        default=0, metadata={"help": "vocabulary size; 0 = take it from the tokenizer (must be > 0 to build)"}
    )
    block_size: int = field(default=256, metadata={"help": "maximum sequence length (context window)"})
    n_layer: int = field(default=4, metadata={"help": "number of transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "number of query heads"})
    n_kv_head: int = field(
        default=0, metadata={"help": "number of key/value heads; 0 = n_head, fewer = grouped-query attention"}
    )
    n_embd: int = field(default=256, metadata={"help": "residual stream width (model dimension)"})
    mlp: str = field(
        default="swiglu",
        metadata={
            "help": "MLP kind: swiglu | gelu | relu2 | gelu_tanh (GPT-2's tanh approximation of gelu) | "
            "geglu (gated, tanh gelu: Gemma)"
        },
    )
    mlp_hidden: int = field(
        default=0,
        metadata={
            "help": "MLP hidden width; 0 = 4*n_embd (gelu, gelu_tanh, relu2) or 8/3*n_embd rounded up to "
            "64 (swiglu, geglu)"
        },
    )
    norm: str = field(default="rmsnorm", metadata={"help": "normalisation: rmsnorm | layernorm"})
    pos: str = field(
        default="rope", metadata={"help": "position scheme: rope | learned | sinusoidal | alibi"}
    )
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency"})
    qk_norm: bool = field(default=False, metadata={"help": "RMSNorm each head's queries and keys"})
    tie_embeddings: bool = field(
        default=True, metadata={"help": "share the token embedding matrix with the output head"}
    )
    dropout: float = field(
        default=0.0, metadata={"help": "dropout on embeddings, attention and residual branches"}
    )
    bias: bool = field(default=False, metadata={"help": "biases in linear layers and layernorm"})
    norm_eps: float = field(default=1e-5, metadata={"help": "epsilon of every normalisation layer"})
    qkv_bias: bool = field(
        default=False,
        metadata={"help": "biases on the query/key/value projections only (Qwen2); bias=True has them too"},
    )
    scale_emb: bool = field(
        default=False, metadata={"help": "multiply token embeddings by sqrt(n_embd) (Gemma)"}
    )
    post_norm: bool = field(
        default=False,
        metadata={"help": "encoder only: post-norm residual blocks x = norm(x + f(x)), no final norm (BERT)"},
    )
    emb_norm: bool = field(
        default=False,
        metadata={"help": "encoder only: normalise the embedding sum before the first block (BERT)"},
    )

    @property
    def head_dim(self) -> int:
        """Width of one attention head (n_embd // n_head)."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads actually used (n_kv_head, or n_head when 0)."""
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        """MLP hidden width: mlp_hidden if set, else 4*n_embd, or for swiglu 8/3*n_embd rounded up to 64.

        The SwiGLU default keeps the parameter count of a 4x MLP with three matrices instead of two
        (Shazeer 2020); rounding up to a multiple of 64 keeps matmuls aligned.
        """
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp in ("swiglu", "geglu"):
            return -(-(8 * self.n_embd // 3) // 64) * 64  # ceil to a multiple of 64
        return 4 * self.n_embd

    def validate(self) -> None:
        """Raise ``ConfigError(key, message)`` for the first impossible value; the key is the field name."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            accepted = _ACCEPTED_TYPES[str(f.type)]
            if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
                raise ConfigError(f.name, f"must be of type {f.type}, got {value!r} ({type(value).__name__})")
        for key, choices in (
            ("arch", ARCH_CHOICES),
            ("mlp", MLP_CHOICES),
            ("norm", NORM_CHOICES),
            ("pos", POS_CHOICES),
        ):
            if getattr(self, key) not in choices:
                raise ConfigError(key, f"unknown {key} {getattr(self, key)!r}; valid: {', '.join(choices)}")
        if self.vocab_size < 0:
            raise ConfigError("vocab_size", f"must be >= 0 (0 = from the tokenizer), got {self.vocab_size}")
        above(self, 0, "block_size", "n_layer", "n_head", "n_embd")
        for key in ("n_kv_head", "mlp_hidden"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0 (0 = default), got {getattr(self, key)}")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise ConfigError("rope_theta", f"must be a finite number > 0, got {self.rope_theta}")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ConfigError("norm_eps", f"must be a finite number > 0, got {self.norm_eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError("n_embd", f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads != 0:
            raise ConfigError(
                "n_kv_head", f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})"
            )
        if self.pos == "rope" and self.head_dim % 2 != 0:
            raise ConfigError(
                "n_embd",
                f"head_dim (n_embd // n_head = {self.head_dim}) must be even for pos='rope'",
            )
        for key in ("post_norm", "emb_norm"):
            if getattr(self, key) and self.arch != "encoder":
                raise ConfigError(key, f"is an encoder option (BERT); arch is {self.arch!r}")
        if self.pos == "sinusoidal" and self.n_embd % 2 != 0:
            raise ConfigError("n_embd", f"n_embd ({self.n_embd}) must be even for pos='sinusoidal'")

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"format": 1, <every input field>}`` (no derived values), ready for JSON."""
        return {"format": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build and validate a config from ``to_dict`` output.

        Raises:
            ConfigError: missing or unsupported ``format``, an unknown key, or an invalid value.
        """
        d = dict(d)
        if "format" not in d:
            raise ConfigError("format", f"missing; expected {FORMAT_VERSION}")
        fmt = d.pop("format")
        if fmt != FORMAT_VERSION:
            raise ConfigError("format", f"unsupported model config format {fmt!r}; expected {FORMAT_VERSION}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(key, f"unknown model config key; valid: {', '.join(known)}")
        for key, value in d.items():  # JSON writes 10000.0 as a float but a hand-written 10000 is an int
            if str(known[key].type) == "float" and isinstance(value, int) and not isinstance(value, bool):
                d[key] = float(value)
        cfg = cls(**d)
        cfg.validate()
        return cfg


def preset(depth: int) -> dict[str, int]:
    """Size preset driven by depth alone, as nanochat does: n_embd = 64*depth, n_head = n_embd // 64.

    Every preset has head_dim 64 and a width/depth ratio of 64. Returns the ModelConfig fields it sets
    (``n_layer``, ``n_embd``, ``n_head``); merge them into a config with ``dataclasses.replace``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError("depth", f"must be an integer >= 1, got {depth!r}")
    n_embd = 64 * depth
    return {"n_layer": depth, "n_embd": n_embd, "n_head": max(1, n_embd // 64)}
