"""The decoder-only transformer language model, in one file. Every architectural choice is listed here.

Defaults are in brackets; each is a ``ModelConfig`` field.

- Token embedding ``tok_emb``; the output head ``lm_head`` (no bias) shares its weight
  [tie_embeddings=True] (Press & Wolf 2017).
- Positions [pos="rope"]:
  * ``rope``: rotary embeddings applied to queries and keys (Su et al. 2021, RoFormer), base
    ``rope_theta``. Departure: the half-split layout of GPT-NeoX/Llama (channel i rotates with
    i + head_dim/2) rather than the paper's adjacent pairs (2i, 2i+1); the two are the same up to a fixed
    permutation of q/k channels, and this layout maps one-to-one onto Hugging Face Llama weights.
  * ``learned``: absolute position embeddings ``pos_emb`` added to the token embeddings (GPT-2).
  * ``sinusoidal``: fixed sin/cos absolute encodings (base 10000) added to the token embeddings
    (Vaswani et al. 2017).
  * ``alibi``: no embedding; a per-head linear distance penalty added to attention scores, slopes the
    geometric sequence of Press et al. 2022 (with their rule for head counts that are not powers of two).
  ``block_size`` is a hard limit for every scheme, cache included.
- Pre-norm residual blocks (Xiong et al. 2020): ``x = x + attn(attn_norm(x))``,
  ``x = x + mlp(mlp_norm(x))``, then a final ``norm`` before ``lm_head``.
- Normalisation [norm="rmsnorm"]: RMSNorm (Zhang & Sennrich 2019) or LayerNorm (Ba et al. 2016), both
  with a learnable gain; LayerNorm has a bias only when ``bias=True``.
- Attention: causal multi-head attention (Vaswani et al. 2017) through
  ``F.scaled_dot_product_attention`` with scale 1/sqrt(head_dim). Separate ``q_proj``/``k_proj``/
  ``v_proj``/``o_proj`` (no fused QKV, so LoRA and weight export map one-to-one). Grouped-query attention
  when ``n_kv_head < n_head`` (Ainslie et al. 2023), by repeating each key/value head for its group.
  Optional QK-norm [qk_norm=False]: RMSNorm over each head's queries and keys, before RoPE (Dehghani et
  al. 2023; placement as in OLMo 2 and Qwen3).
- MLP [mlp="swiglu"]: SwiGLU ``down(silu(gate(x)) * up(x))`` (Shazeer 2020; [mlp="geglu"] GeGLU with the
  tanh GELU, as Gemma); GELU ``down(gelu(up(x)))`` (Hendrycks & Gimpel 2016, exact erf form;
  [mlp="gelu_tanh"] its tanh approximation, as GPT-2); squared ReLU ``down(relu(up(x))^2)`` (So et al.
  2021, Primer). Hidden width ``ModelConfig.hidden_dim``.
- Biases on linear layers (and LayerNorm) only when ``bias=True`` [False], never on ``lm_head``; on q/k/v
  alone with ``qkv_bias`` (Qwen2). ``scale_emb``: embeddings times sqrt(n_embd) (Gemma).
  Dropout [0.0] on the embedding sum, attention probabilities and both residual branches.
- Initialisation: ``Decoder.init_weights`` documents every tensor's init in one place.
- One forward for training, scoring and decoding. Incremental decoding: ``forward(idx, cache)`` with a
  ``KVCache`` (see kv_cache.py); positions (all four schemes) start at ``cache.pos``, per row: a ragged
  batch is left-padded, row b's positions are its columns minus ``cache.pad[b]`` and its padding is
  masked out (the engine, the serving scheduler and speculative decoding all decode this way).
- Speed (same parameters, state-dict keys and math up to float rounding; measurements in
  docs/performance.md). q/k/v come from one matmul over the concatenated
  weights, whose rows put each head's RoPE pair (i, i + Q/2) side by side, so the rotation is one complex
  multiply (permuting the channels of q and k alike leaves q·k unchanged); gate/up are one matmul; the
  residual additions are fused into the o_proj/down_proj matmuls (``addmm``); RMSNorm, SwiGLU and RoPE
  have hand-written backwards with fewer passes over the activations. Under CPU autocast, attention runs
  in fp32 (CPU flash attention is slower in bf16). Kernels: kernels.py. Decoding passes
  ``weights=DecodeWeights(model)`` (decode_weights.py): the same fused matrices, built once instead of per
  call, with matmul kernels suited to few rows (and opt-in int8); ``last_only`` skips ``lm_head`` on all
  but the last position; in fp32 without gradients rotated keys and values go straight into the cache;
  cached decoding keeps the residual stream flat (``[B*T, D]``), so no views sit between it and the
  2-D matmuls. Projections that are not a plain ``nn.Linear`` (e.g. LoRA-wrapped) are called
  as modules; under ``torch.compile`` (inductor fuses by itself) RMSNorm and SwiGLU take plain ops.

Shape notation: B batch, T new tokens, S = cache position + T keys, D n_embd, H query heads,
K key/value heads, Q head_dim, V vocab_size.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.decode_weights import DecodeWeights, LayerWeights, Matmul
from lmforge.model.kernels import (
    RMSNorm,
    RopeQKVFunction,
    SwiGLUFunction,
    linear_add,
    pairs,
    rope_interleaved,
    rope_qkv,
)
from lmforge.model.kv_cache import KVCache
from lmforge.model.positional import (
    alibi_slopes,
    apply_rope,
    register_position_tables,
    rope_tables,
    sinusoidal_table,
)

__all__ = ["Attention", "Block", "Decoder", "MLP", "RMSNorm", "alibi_slopes", "apply_rope", "count_params"]
__all__ += ["init_blocks", "make_norm", "rope_tables", "sinusoidal_table"]

INIT_STD = 0.02


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """Return the configured normalisation layer over the last ``dim`` features."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def count_params(model: nn.Module, non_embedding: bool = True) -> int:
    """Number of distinct parameters of ``model`` (tied tensors counted once).

    With ``non_embedding`` the weights of every ``nn.Embedding`` (token and learned position tables) are
    left out, as in Kaplan et al. 2020. An untied ``lm_head`` still counts; a tied one is the embedding.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if not (non_embedding and id(p) in embedding_ids))


class Attention(nn.Module):
    """Self-attention with separate projections, optional GQA, QK-norm, RoPE and KV cache.

    The caller decides what each query sees through ``attn_mask``/``is_causal`` (as for
    ``F.scaled_dot_product_attention``): the ``Decoder`` passes a causal mask, the ``Encoder``
    (encoder.py) a padding mask with ``is_causal=False``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout

    def qkv_weight(self, rope: bool) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """q/k/v weights as one ``[(H+2K)Q, D]`` matrix (and bias), with each head's RoPE pairs in adjacent
        rows of q and k when ``rope``; ``None`` when a projection is not a plain ``nn.Linear``."""
        if not all(type(p) is nn.Linear for p in (self.q_proj, self.k_proj, self.v_proj)):
            return None
        H, K, Q = self.n_head, self.n_kv_head, self.head_dim
        heads = ((self.q_proj, H, rope), (self.k_proj, K, rope), (self.v_proj, K, False))
        w = torch.cat([pairs(p.weight, n, Q, r) for p, n, r in heads]).view(-1, self.q_proj.in_features)
        b = None if self.q_proj.bias is None else torch.cat([pairs(p.bias, n, Q, r) for p, n, r in heads])
        return w, None if b is None else b.view(-1)

    def _fused_qkv(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...] | None,
        out_dtype: torch.dtype | None,
        matmul: Matmul | None,
        k_out: torch.Tensor | None = None,
        bt: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q ``[B, T, H, Q]``, k and v ``[B, T, K, Q]`` from one matmul over the concatenated weights
        (``matmul``: prepared once for decoding, else concatenated for this call). Without gradients,
        rotated keys go straight into ``k_out`` (the cache's slot) when given. ``bt``: (B, T) of a
        flattened ``x`` ``[B*T, D]`` (cached decoding keeps the residual stream 2-D)."""
        B, T = bt or x.shape[:2]
        H, K, Q = self.n_head, self.n_kv_head, self.head_dim
        inter = rope is not None  # each head's RoPE pairs sit in adjacent rows of q and k
        if matmul is None:
            w, b = self.qkv_weight(inter)  # type: ignore[misc]
            qkv = F.linear(x, w, b).view(B, T, H + 2 * K, Q)
        else:
            qkv = matmul(x if bt else x.view(B * T, -1)).view(B, T, H + 2 * K, Q)
        if self.q_norm is not None and self.k_norm is not None:
            q, k, v = qkv.split((H, K, K), dim=2)
            q = F.rms_norm(q, (Q,), pairs(self.q_norm.weight, 1, Q, inter).reshape(Q), self.q_norm.eps)
            k = F.rms_norm(k, (Q,), pairs(self.k_norm.weight, 1, Q, inter).reshape(Q), self.k_norm.eps)
            if inter:
                q, k = rope_interleaved(q, *rope[:2]), rope_interleaved(k, *rope[:2])
        elif inter and not torch.compiler.is_compiling():
            freqs = rope[2] if len(rope) > 2 else torch.complex(*rope).unsqueeze(-2)  # [T or B, T, 1, Q/2]
            if torch.is_grad_enabled():
                q, k, v = RopeQKVFunction.apply(qkv, freqs, H, K, out_dtype)
            else:
                q, k, v = rope_qkv(qkv, freqs, H, K, out_dtype, k_out)
        elif inter:
            q, k = rope_interleaved(qkv[:, :, : H + K], *rope[:2]).split((H, K), dim=2)
            v = qkv[:, :, H + K :]
        else:
            q, k, v = qkv.split((H, K, K), dim=2)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        layer: int,
        residual: torch.Tensor | None = None,
        prepared: LayerWeights | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` ``[B, T, D]`` over itself (and the cached prefix); return ``[B, T, D]``.

        ``rope``: cos/sin ``[T, Q/2]``, or per row ``[B, T, Q/2]`` (optionally a third entry: their
        complex ``[T or B, T, 1, Q/2]``, computed once per forward). With ``residual`` (``[B, T, D]``)
        return ``residual + attention(x)``. ``prepared``: this layer's decode matrices (decode_weights.py).
        With ``prepared`` and a ``cache``, ``x`` (and ``residual``, and the result) may be flattened to
        ``[B*T, D]`` (B = the cache's batch): cached decoding keeps its residual stream 2-D, which spares
        the views between it and the 2-D matmuls.
        """
        flat = x.dim() == 2
        B, T = (cache.batch_size, x.shape[0] // cache.batch_size) if flat else x.shape[:2]
        # CPU flash attention is slower in bf16 than in fp32 (measured), so under CPU autocast it runs in fp32
        fp32_attention = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        qkv = None if prepared is None else prepared.qkv
        slots, written = None, False  # decoding in fp32: the cache's columns of this step, written in place
        if cache is not None and cache.k.dtype == x.dtype == torch.float32 and not torch.is_grad_enabled():
            slots = cache.slots(layer, T)  # [B, T, K, Q] each
        if qkv is not None or all(type(p) is nn.Linear for p in (self.q_proj, self.k_proj, self.v_proj)):
            out_dtype = torch.float32 if fp32_attention else None
            bt = (B, T) if flat else None
            q, k, v = self._fused_qkv(x, rope, out_dtype, qkv, None if slots is None else slots[0], bt)
            written = slots is not None and k is slots[0]  # rotated keys went straight into the cache
            if written:
                slots[1].copy_(v)
                k, v = cache.filled(layer, T)  # [B, K, S, Q]
            else:
                k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, K, T, Q]
            q = q.transpose(1, 2)  # [B, H, T, Q]
        else:
            q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, Q]
            k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, K, T, Q]
            v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, K, T, Q]
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope[:2]), apply_rope(k, *rope[:2])
        if cache is not None and not written:
            k, v = cache.update(layer, k, v)  # [B, K, S, Q]
        gqa = self.n_kv_head != self.n_head and cache is not None  # the kernel's GQA: no copy of the cache
        if self.n_kv_head != self.n_head and not gqa:
            group = self.n_head // self.n_kv_head
            k = k.repeat_interleave(group, dim=1)  # [B, H, S, Q]
            v = v.repeat_interleave(group, dim=1)  # [B, H, S, Q]
        with torch.autocast("cpu", enabled=False) if fp32_attention else contextlib.nullcontext():
            if fp32_attention:
                q, k, v = q.float(), k.float(), v.float()
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=is_causal,
                enable_gqa=gqa,
            )  # [B, H, T, Q]
        if flat and T == 1 and y.is_contiguous():  # one new token: [B, H, 1, Q] is [B, H*Q] already
            y = y.view(B, -1)
        else:
            y = y.transpose(1, 2).reshape(*((B * T,) if flat else (B, T)), -1)  # [B, T, H*Q] or [B*T, H*Q]
        return linear_add(self.o_proj, y, residual, None if prepared is None else prepared.o)


class MLP(nn.Module):
    """Position-wise feed-forward: SwiGLU / GeGLU (gate_proj, up_proj, down_proj) or GELU / ReLU² (up, down)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = cfg.hidden_dim
        gated = cfg.mlp in ("swiglu", "geglu")
        self.gate_proj = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias) if gated else None
        self.up_proj = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)

    def gate_up_weight(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """gate/up weights as one ``[2F, D]`` matrix (and bias); ``None`` without a plain gated pair."""
        if self.gate_proj is None or not type(self.gate_proj) is type(self.up_proj) is nn.Linear:
            return None
        w = torch.cat((self.gate_proj.weight, self.up_proj.weight))  # [2F, D]
        b = None if self.up_proj.bias is None else torch.cat((self.gate_proj.bias, self.up_proj.bias))
        return w, b

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, prepared: LayerWeights | None = None
    ) -> torch.Tensor:
        """Map ``[B, T, D]`` (or flat ``[B*T, D]``) to the same shape (plus ``residual`` when given);
        ``prepared`` as ``Attention``."""
        gate_up = None if prepared is None else prepared.gate_up
        wb = self.gate_up_weight() if gate_up is None else None
        if gate_up is not None or wb is not None:
            if wb is not None:
                gu = F.linear(x, *wb)
            elif x.dim() == 2:  # cached decoding's flat stream
                gu = gate_up(x)
            else:
                gu = gate_up(x.view(-1, x.shape[-1])).view(*x.shape[:-1], -1)
            g, u = gu.chunk(2, dim=-1)  # [B, T, F] each
            if self.kind == "geglu":
                h = F.gelu(g, approximate="tanh") * u
            elif torch.compiler.is_compiling() or not torch.is_grad_enabled():
                h = F.silu(g).mul_(u)
            else:
                h = SwiGLUFunction.apply(gu)
        elif self.kind == "geglu":
            h = F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)
        elif self.gate_proj is not None:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.kind == "gelu":
            h = F.gelu(self.up_proj(x))
        elif self.kind == "gelu_tanh":
            h = F.gelu(self.up_proj(x), approximate="tanh")
        else:  # relu2
            h = F.relu(self.up_proj(x)).square()
        return linear_add(self.down_proj, h, residual, None if prepared is None else prepared.down)


class Block(nn.Module):
    """One transformer block: attention then MLP, each on a residual branch; pre-norm, or post-norm
    (``x = norm(x + f(x))``, BERT) with ``cfg.post_norm``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.attn_norm = make_norm(cfg, cfg.n_embd)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        layer: int,
        prepared: LayerWeights | None = None,
    ) -> torch.Tensor:
        """Map ``[B, T, D]`` to ``[B, T, D]`` (``prepared``: this layer's decode matrices, or None)."""
        args = (rope, attn_mask, is_causal, cache, layer)
        if self.post_norm:
            x = self.attn_norm(x + self.resid_drop(self.attn(x, *args, prepared=prepared)))
            return self.mlp_norm(x + self.resid_drop(self.mlp(x, prepared=prepared)))
        if self.training and self.resid_drop.p > 0:
            x = x + self.resid_drop(self.attn(self.attn_norm(x), *args))
            return x + self.resid_drop(self.mlp(self.mlp_norm(x)))
        x = self.attn(self.attn_norm(x), *args, residual=x, prepared=prepared)
        return self.mlp(self.mlp_norm(x), residual=x, prepared=prepared)


@torch.no_grad()
def init_blocks(model: nn.Module, blocks: nn.ModuleList, n_layer: int) -> None:
    """Initialise the transformer blocks of ``model`` and every bias and norm in it (shared with the encoder).

    Projections into heads and the MLP: normal, std 0.02; ``o_proj`` and ``down_proj`` (writing into the
    residual stream): std 0.02 / sqrt(2 * n_layer); linear and LayerNorm biases: zeros; norm gains: ones.
    """
    residual_std = INIT_STD / math.sqrt(2 * n_layer)
    for block in blocks:
        attn, mlp = block.attn, block.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            if linear is not None:
                nn.init.normal_(linear.weight, mean=0.0, std=INIT_STD)
        for linear in (attn.o_proj, mlp.down_proj):
            nn.init.normal_(linear.weight, mean=0.0, std=residual_std)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            module.reset_parameters()  # gain ones, bias zeros


def _pad_range(cache: KVCache) -> tuple[int, int]:
    """``(min, max)`` of ``cache.pad``, remembered on the cache until the tensor is replaced or written
    (its version counter): a decode step then reads no tensor back (the ranges decide the mask)."""
    pad = cache.pad
    seen = getattr(cache, "_pad_range", None)  # (the tensor itself, its version, the range)
    if seen is None or seen[0] is not pad or seen[1] != pad._version:
        seen = (pad, pad._version, tuple(int(v) for v in torch.aminmax(pad)))
        cache._pad_range = seen  # type: ignore[attr-defined]
    return seen[2]


class Decoder(nn.Module):
    """Decoder-only transformer language model (architecture in the module docstring).

    Args:
        cfg: the model configuration; validated here, and ``vocab_size`` must be > 0.
    Raises:
        ConfigError: an invalid field, or ``vocab_size`` still 0 (it was meant to come from a tokenizer).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise ConfigError(
                "vocab_size", f"must be > 0 to build a model, got {cfg.vocab_size}; set it from the tokenizer"
            )
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        register_position_tables(self, cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter. The one place that states each tensor's init:

        - ``tok_emb.weight`` (and ``lm_head.weight``, tied or not): normal, std 0.02 (GPT-2).
        - ``pos_emb.weight`` (learned positions): normal, std 0.02.
        - ``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj`` weights: normal, std 0.02.
        - ``o_proj`` and ``down_proj`` weights (they write into the residual stream): normal, std
          0.02 / sqrt(2 * n_layer), so the residual variance does not grow with depth (GPT-2, Radford
          et al. 2019).
        - Every linear bias (``bias=True``) and LayerNorm bias: zeros.
        - Every norm gain (attn_norm, mlp_norm, norm, q_norm, k_norm): ones.
        """
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=INIT_STD)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=INIT_STD)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, mean=0.0, std=INIT_STD)
        init_blocks(self, self.blocks, self.config.n_layer)

    def new_kv_cache(
        self, batch_size: int, max_len: int | None = None, pad: torch.Tensor | None = None
    ) -> KVCache:
        """An empty ``KVCache`` for this model's shape, dtype and device (``max_len`` default block_size);
        ``pad[b]``: left-padding columns of row b (a ragged batch; default none)."""
        cfg = self.config
        weight = self.tok_emb.weight
        cache = KVCache(
            batch_size,
            max_len or cfg.block_size,
            cfg.n_layer,
            cfg.kv_heads,
            cfg.head_dim,
            dtype=weight.dtype,
            device=weight.device,
        )
        if pad is not None:
            cache.pad = pad.to(device=weight.device, dtype=torch.long)  # [B]
        return cache

    def _attention_mask(
        self, start: int, T: int, dtype: torch.dtype, device: torch.device, pad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, bool]:
        """Mask for T queries at columns start..start+T-1 over keys 0..start+T-1, ``pad[b]`` of row b's
        first columns padding (a ragged batch; ``None`` = no padding).

        Returns ``(attn_mask, is_causal)`` for ``F.scaled_dot_product_attention``. Without padding: the
        cheap built-in causal mask when there is no prefix, nothing for one new token (it sees every
        key), and a boolean ``[T, S]`` mask for a multi-token chunk after a prefix. With padding a boolean
        ``[B, 1, T, S]`` mask that also hides every padding key (a padding query sees itself, so its unused
        output stays finite). ALiBi gets a float bias (``-slope * distance``, ``-inf`` where masked),
        ``[1 or B, H, T, S]``.
        """
        S = start + T
        alibi = self.config.pos == "alibi"
        if not alibi and pad is None:
            if start == 0:
                return None, True
            if T == 1:
                return None, False
        keys = torch.arange(S, device=device)
        distance = keys[None, :] - torch.arange(start, S, device=device)[:, None]  # [T, S]; <= 0: may attend
        allowed = distance <= 0  # [T, S]
        if pad is not None:
            allowed = ((allowed & (keys >= pad[:, None, None])) | (distance == 0))[:, None]  # [B, 1, T, S]
        if not alibi:
            return allowed, False
        bias = self.alibi_slopes[:, None, None] * distance[None].to(torch.float32)  # [H, T, S]
        bias = bias.masked_fill(~allowed, float("-inf"))  # [H, T, S] or [B, H, T, S]
        return (bias if pad is not None else bias[None]).to(dtype), False

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        *,
        weights: DecodeWeights | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` (``[B, 1, V]`` with ``last_only``) for token ids ``idx``
        ``[B, T]``: ``lm_head(hidden_states)``. ``cache``/``weights`` as in ``hidden_states``; with
        ``weights`` (inference only: they are detached copies) no autograd graph is recorded."""
        with torch.no_grad() if weights is not None else contextlib.nullcontext():
            x = self.hidden_states(idx, cache, weights=weights)  # [B, T, D]
            if last_only:
                x = x[:, -1:]
            if weights is not None and weights.head is not None:
                return weights.head(x.reshape(-1, x.shape[-1])).view(*x.shape[:2], -1)
            return self.lm_head(x)  # [B, T or 1, V]

    def hidden_states(
        self, idx: torch.Tensor, cache: KVCache | None = None, *, weights: DecodeWeights | None = None
    ) -> torch.Tensor:
        """Final hidden states ``[B, T, D]`` (after the final norm, before ``lm_head``) for ``idx`` ``[B, T]``.

        The one forward of the model: training, scoring, and cached decoding of one prompt or a ragged
        batch. With a ``cache`` the tokens are written at columns ``cache.pos ..`` after the cached prefix
        and ``cache.pos`` advances by T. Row b's positions are its columns minus ``cache.pad[b]``, its
        left-padding (per-row positions: prompts of different lengths, left-padded, decode together); its
        padding columns are masked out of every query's keys. ``weights``: matrices prepared for decoding
        (decode_weights.py), the same math with faster kernels.

        Raises:
            ValueError: ``idx`` is not a 2-D integer tensor, a row's position would reach ``block_size``,
                or the cache does not fit the batch.
        """
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"idx must be a [B, T] integer tensor, got {tuple(idx.shape)} {idx.dtype}")
        B, T = idx.shape
        start, pad, pad_min = 0, None, 0
        if cache is not None:
            start = cache.pos
            if cache.pad is not None:
                pad_min, pad_max = _pad_range(cache)
                pad = cache.pad if pad_max > 0 else None
        if start + T - pad_min > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T - pad_min} tokens (cache position {start - pad_min} + {T} new) "
                f"exceeds block_size {self.config.block_size}"
            )
        if cache is not None:
            cache.check(B, T)
        # positions: a slice [T] shared by every row, or per row [B, T] (padding columns: 0)
        pos = slice(start - pad_min, start - pad_min + T)
        if pad is not None:
            pos = (torch.arange(start, start + T, device=idx.device)[None, :] - pad[:, None]).clamp_(min=0)
        x = self.tok_emb(idx)  # [B, T, D]
        if self.config.scale_emb:
            x = x * torch.tensor(self.config.n_embd**0.5, dtype=x.dtype)  # rounded to x's dtype, as Gemma
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[pos]  # [T or B, T, D] broadcast
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_table[pos].to(x.dtype)
        if self.training:
            x = self.drop(x)
        rope = None
        if self.config.pos == "rope":
            rope = (self.rope_cos[pos], self.rope_sin[pos])  # [T or B, T, Q/2] each
            if (
                not torch.compiler.is_compiling()
            ):  # the complex rotation of the eager path, once for all layers
                rope += (torch.complex(*rope).unsqueeze(-2),)
        attn_mask, is_causal = self._attention_mask(start, T, x.dtype, x.device, pad)
        layers = weights.layers if weights is not None else [None] * len(self.blocks)
        flat = weights is not None and cache is not None  # cached decoding: a 2-D stream [B*T, D]
        if flat:
            x = x.view(B * T, -1)
        for layer, (block, prepared) in enumerate(zip(self.blocks, layers)):
            x = block(x, rope, attn_mask, is_causal, cache, layer, prepared)
        if cache is not None:
            cache.advance(T)
        return self.norm(x).view(B, T, -1) if flat else self.norm(x)  # [B, T, D]

    def num_params(self, non_embedding: bool = True) -> int:
        """Distinct parameters; see ``count_params`` for what ``non_embedding`` leaves out."""
        return count_params(self, non_embedding=non_embedding)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward) at full context: ``6 N + 12 L H Q T``.

        Following Chowdhery et al. 2022 (PaLM, appendix B) as nanochat does: N counts every weight that
        takes part in a matmul (non-embedding parameters plus the output head, which still costs a
        matmul when tied); each costs 2 FLOPs per token forward and 4 backward. The second term is the
        attention score and value matmuls, with L layers, H query heads, Q head_dim, T = block_size.
        """
        cfg = self.config
        n = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:
            n += self.lm_head.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
