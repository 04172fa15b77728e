"""How much memory a model config needs, estimated from its shapes before anything is allocated.

A stage that builds a model from a config (``pretrain``) calls :func:`check_fits` before its stage
directory exists, so ``--model.block_size 100000000`` or ``--model.n_layer 100000`` is refused with the
estimate, the memory available and the key that dominates, instead of allocating until the machine
swaps. The estimate, in bytes (fp32 everywhere, so an upper bound under bf16 autocast):

- **weights, gradients and AdamW state**: 16 per parameter (4 + 4 + two 4-byte moments; Muon keeps
  less). Parameters are counted from the shapes of ``decoder.py`` / ``encoder.py`` (``param_counts``,
  tested against the built model).
- **per-position tables**: RoPE cos/sin (``[block_size, head_dim/2]`` each) or the sinusoidal table
  (``[block_size, n_embd]``), counted with the float64 intermediates they are computed through.
- **activations** kept for backward, for ``batch_size × block_size`` tokens: ~``10·n_embd + 4·hidden``
  floats per token per block (residual, norms, q/k/v, attention output, MLP; attention itself is the
  fused kernel, O(T)), ALiBi's materialised ``[H, T, T]`` bias and weights per block, and the logits
  with their softmax and gradient (3 floats per token per vocabulary entry).

With ``on_host`` False (training on a GPU) only what is built on the host is counted: weights and tables.
Available memory is psutil's ``available`` (else ``MemAvailable`` of ``/proc/meminfo``);
``LMFORGE_MEMORY_LIMIT`` (bytes, or with a K/M/G/T suffix) replaces it, and ``0`` turns the check off.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig

LIMIT_ENV = "LMFORGE_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)} | {"vocab_size": 32768}


@dataclass(frozen=True)
class Term:
    """One part of the estimate: what it is, its bytes, and the config keys it grows with (``key: value``
    → exponent), the first of which is named when this term dominates."""

    what: str
    bytes: int
    grows_with: dict[str, tuple[int, int]]  # key → (value, exponent)

    def key(self, default_batch: int) -> str:
        """The key furthest above its default (value / default, to the term's power)."""

        def excess(item: tuple[str, tuple[int, int]]) -> float:
            key, (value, power) = item
            default = default_batch if key.endswith("batch_size") else _DEFAULTS[key.rpartition(".")[2]]
            return (value / max(default, 1)) ** power

        return max(self.grows_with.items(), key=excess)[0]


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by part (``embeddings``, ``positions``, ``blocks``, ``heads``) of the model ``cfg``
    builds (``Decoder``, or ``EncoderForPretraining`` without the NSP head), without building it."""
    D, V, Q, Hd = cfg.n_embd, cfg.vocab_size, cfg.head_dim, cfg.hidden_dim
    q, kv = cfg.n_head * Q, cfg.kv_heads * Q
    gated = cfg.mlp in ("swiglu", "geglu")
    norm = D * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    block = D * (q + 2 * kv) + q * D + D * Hd * (3 if gated else 2) + 2 * norm
    if cfg.bias or cfg.qkv_bias:
        block += q + 2 * kv
    if cfg.bias:
        block += D + Hd * (2 if gated else 1) + D
    if cfg.qk_norm:
        block += 2 * Q
    counts = {
        "embeddings": V * D,
        "positions": cfg.block_size * D if cfg.pos == "learned" else 0,
        "blocks": cfg.n_layer * block + norm,
        "heads": 0,
    }
    if cfg.arch == "encoder":  # segment embeddings, optional embedding norm, MLM transform + bias
        counts["embeddings"] += 2 * D + (norm if cfg.emb_norm else 0)
        counts["heads"] = D * D + (D if cfg.bias else 0) + norm + V + (0 if cfg.tie_embeddings else V * D)
    elif not cfg.tie_embeddings:
        counts["heads"] = V * D
    return counts


def estimate(
    cfg: ModelConfig,
    batch_size: int,
    *,
    prefix: str = "model.",
    batch_key: str = "batch_size",
    on_host: bool = True,
) -> list[Term]:
    """The terms of the memory a training run of ``cfg`` at ``batch_size`` needs (module docstring);
    keys are written ``prefix + field`` (``model.block_size``) and ``batch_key``."""
    T, D, L, V = cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.vocab_size
    k = {name: f"{prefix}{name}" for name in ("block_size", "n_embd", "n_layer", "vocab_size", "n_head")}
    counts = param_counts(cfg)
    per_param = 16 if on_host else 4
    state = "weights, gradients and AdamW state" if on_host else "weights"
    terms = [
        Term(
            f"{state} of the blocks ({counts['blocks']:,} parameters)",
            per_param * counts["blocks"],
            {k["n_layer"]: (L, 1), k["n_embd"]: (D, 2)},
        ),
        Term(
            f"{state} of the embeddings and heads ({counts['embeddings'] + counts['heads']:,} parameters)",
            per_param * (counts["embeddings"] + counts["heads"]),
            {k["vocab_size"]: (V, 1), k["n_embd"]: (D, 1)},
        ),
    ]
    if cfg.pos == "learned":
        terms.append(
            Term(
                f"{state} of the learned position table ({counts['positions']:,} parameters)",
                per_param * counts["positions"],
                {k["block_size"]: (T, 1), k["n_embd"]: (D, 1)},
            )
        )
    elif cfg.pos == "rope":  # fp32 cos + sin, built from float64 angles (and a float64 cos/sin each)
        terms.append(Term("RoPE cos/sin tables", 24 * T * (cfg.head_dim // 2), {k["block_size"]: (T, 1)}))
    elif cfg.pos == "sinusoidal":  # float64 angles, sin, cos and their stack, then the fp32 table
        terms.append(Term("sinusoidal position table", 24 * T * D, {k["block_size"]: (T, 1)}))
    if on_host:
        tokens = batch_size * T
        b = {batch_key: (batch_size, 1), k["block_size"]: (T, 1)}
        terms.append(
            Term(
                "activations of the blocks for batch_size × block_size tokens",
                4 * tokens * L * (10 * D + 4 * cfg.hidden_dim),
                b | {k["n_layer"]: (L, 1), k["n_embd"]: (D, 1)},
            )
        )
        if cfg.pos == "alibi":
            terms.append(
                Term(
                    "ALiBi attention bias and weights [batch, heads, T, T] per block",
                    8 * batch_size * cfg.n_head * T * T * (L + 1),
                    {k["block_size"]: (T, 2), batch_key: (batch_size, 1), k["n_head"]: (cfg.n_head, 1)},
                )
            )
        terms.append(
            Term(
                "logits, their softmax and gradient for batch_size × block_size tokens",
                12 * tokens * V,
                b | {k["vocab_size"]: (V, 1)},
            )
        )
    return terms


def available_bytes() -> tuple[int | None, str]:
    """``(bytes, where the figure comes from)``: ``LMFORGE_MEMORY_LIMIT`` when set (None when it is 0:
    no check), else psutil's available memory, else ``MemAvailable`` of ``/proc/meminfo``; None when
    none can be read."""
    limit = os.environ.get(LIMIT_ENV, "").strip().upper().removesuffix("B")
    if limit:
        unit = limit[-1] if limit[-1] in _UNITS else ""
        try:
            value = float(limit.removesuffix(unit)) * _UNITS[unit]
        except ValueError:
            raise ConfigError(
                LIMIT_ENV, f"must be bytes with an optional K/M/G/T suffix, got {limit!r}"
            ) from None
        return (int(value) if value > 0 else None), LIMIT_ENV
    try:
        import psutil  # optional: a dependency of some extras, not of lmforge

        return int(psutil.virtual_memory().available), "available memory"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    return None, ""


def gib(n: float) -> str:
    """``n`` bytes as GiB with 3 significant digits."""
    g = n / (1 << 30)
    return f"{g:,.0f} GiB" if g >= 100 else f"{g:.3g} GiB"


def check_fits(
    cfg: ModelConfig,
    batch_size: int,
    *,
    ranks: int = 1,
    on_host: bool = True,
    prefix: str = "model.",
    batch_key: str = "batch_size",
    default_batch: int = 16,
) -> None:
    """Refuse a config whose training run cannot fit in the memory available, before anything is built.

    ``ranks`` processes on this machine each hold a copy (``procs``). The error's key is the key that
    dominates the largest term; the message gives the estimate, what is available and every big term.

    Raises:
        ConfigError: the estimate exceeds the memory available.
    """
    available, source = available_bytes()
    if available is None:
        return
    terms = estimate(cfg, batch_size, prefix=prefix, batch_key=batch_key, on_host=on_host)
    total = ranks * sum(t.bytes for t in terms)
    if total <= available:
        return
    terms.sort(key=lambda t: t.bytes, reverse=True)
    parts = "; ".join(f"{t.what}: {gib(ranks * t.bytes)}" for t in terms if t.bytes * 100 >= total / ranks)
    per_rank = f" ({ranks} ranks, one copy each)" if ranks > 1 else ""
    raise ConfigError(
        terms[0].key(default_batch),
        f"the run needs about {gib(total)}{per_rank} but {gib(available)} is free ({source}): {parts}. "
        f"Make it smaller, or set {LIMIT_ENV} (bytes, K/M/G suffix; 0 = no check) if the estimate is wrong",
    )


def trains_on_host(device: str) -> bool:
    """Whether ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``) keeps training state in host memory
    (every device but CUDA; ``mps`` shares it)."""
    if device.startswith("cuda"):
        return False
    if device != "auto":
        return True
    import torch  # only to resolve 'auto'

    return not torch.cuda.is_available()
