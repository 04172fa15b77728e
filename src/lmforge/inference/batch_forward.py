"""The decoder's forward pass for inference on a ragged batch: left padding, per-row positions, one cache.

``Decoder.forward(idx, cache)`` gives every row the same positions, which is right for one prompt (or
several of equal length) but not for prompts of different lengths. ``RaggedForward`` runs the same
weights over a *left-padded* batch: row ``b`` has ``pad[b]`` padding columns before its prompt, so every
prompt ends at the same column and one shared cache position serves all rows. Each row's tokens get
their true positions (column minus ``pad[b]``), and padding columns are masked out of every query's
keys. The math is the decoder's (decoder.py lists it: RoPE, learned, sinusoidal and ALiBi positions,
GQA, QK-norm, every norm and MLP kind), read from the decoder's own modules, so a LoRA-wrapped projection
still works; it is written again here only because the decoder's forward has no per-row positions.

Speed (cached decoding is bound by per-op overhead and weight reads at small batch): for plain
``nn.Linear`` projections q/k/v and gate/up run as one matmul each over concatenated weights, built once
and rebuilt only when a parameter changes (tracked by tensor version counters, so an optimiser step
between generations is seen).

Shape notation: B batch, T new tokens, S filled cache columns, D n_embd, H heads, K kv heads, Q head_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.decoder import Decoder, apply_rope
from lmforge.model.kv_cache import KVCache


class RaggedForward:
    """Cached forward of a ``Decoder`` over a left-padded batch (module docstring).

    Args:
        model: the decoder; its parameters are read at every call (never copied except fused weights).

    Use: ``new_cache(pad, max_len)`` then ``__call__(idx, cache)`` for the prefill and each decode step.
    """

    def __init__(self, model: Decoder):
        if not isinstance(model, Decoder):
            raise TypeError(f"RaggedForward needs an lmforge Decoder, got {type(model).__name__}")
        self.model = model
        self.cfg = model.config
        self._fused: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        self._fused_key: tuple = ()

    def new_cache(self, pad: torch.Tensor, max_len: int) -> KVCache:
        """A cache of ``max_len`` columns for ``len(pad)`` rows; ``pad[b]`` = padding columns of row b."""
        cache = self.model.new_kv_cache(len(pad), max_len)
        cache.pad = pad.to(device=cache.k.device, dtype=torch.long)  # [B]
        return cache

    # -- fused weights ---------------------------------------------------------------------------
    def _fused_weights(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Per layer ``(qkv weight [(H+2K)Q, D] or None, gate_up weight [2F, D] or None)``."""
        params = [p for block in self.model.blocks for p in block.parameters()]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._fused_key:
            self._fused = [
                (
                    _cat_linears(b.attn.q_proj, b.attn.k_proj, b.attn.v_proj),
                    _cat_linears(b.mlp.gate_proj, b.mlp.up_proj),
                )
                for b in self.model.blocks
            ]
            self._fused_key = key
        return self._fused

    # -- forward ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits ``[B, T, V]`` of tokens ``idx`` ``[B, T]`` written at cache columns ``cache.pos ..``.

        Raises:
            ValueError: a row's last position would reach ``block_size``, or the cache is full.
        """
        model, cfg = self.model, self.cfg
        B, T = idx.shape
        start = cache.pos
        cache.check(B, T)
        pad = cache.pad  # [B]
        cols = torch.arange(start, start + T, device=idx.device)  # [T]
        pos = (cols[None, :] - pad[:, None]).clamp_(min=0)  # [B, T] true positions (pad columns: 0)
        if start + T - int(pad.min()) > cfg.block_size:
            raise ValueError(
                f"a row reaches position {start + T - int(pad.min())} > block_size {cfg.block_size}"
            )
        x = model.tok_emb(idx)  # [B, T, D]
        if model.pos_emb is not None:
            x = x + model.pos_emb(pos)
        elif cfg.pos == "sinusoidal":
            x = x + model.pos_table[pos].to(x.dtype)
        rope = None
        if cfg.pos == "rope":
            rope = (model.rope_cos[pos][:, None], model.rope_sin[pos][:, None])  # [B, 1, T, Q/2] each
        mask = self._mask(cols, pad, x.dtype)
        fused = self._fused_weights()
        for layer, block in enumerate(model.blocks):
            x = x + self._attention(
                block.attn, _norm(block.attn_norm, x), rope, mask, cache, layer, fused[layer][0]
            )
            x = x + self._mlp(block.mlp, _norm(block.mlp_norm, x), fused[layer][1])
        cache.advance(T)
        return model.lm_head(_norm(model.norm, x))  # [B, T, V]

    def _mask(self, cols: torch.Tensor, pad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Attention mask for queries at columns ``cols`` over keys ``0 .. cols[-1]``.

        Bool ``[B, 1, T, S]`` (True = attend): causal, and no padding column — except that a padding
        query sees itself, so its (unused) output stays finite. ALiBi gets a float bias instead.
        ``None`` when nothing needs masking (one row-aligned token step without padding or ALiBi).
        """
        S = int(cols[-1]) + 1
        alibi = self.cfg.pos == "alibi"
        if not alibi and len(cols) == 1 and int(pad.max()) == 0:
            return None
        keys = torch.arange(S, device=cols.device)  # [S]
        distance = keys[None, :] - cols[:, None]  # [T, S]
        allowed = (distance <= 0)[None] & (keys[None, None, :] >= pad[:, None, None])  # [B, T, S]
        allowed = allowed | (distance == 0)[None]
        if not alibi:
            return allowed[:, None]  # [B, 1, T, S]
        bias = self.model.alibi_slopes[:, None, None] * distance[None].to(torch.float32)  # [H, T, S]
        bias = bias[None].masked_fill(~allowed[:, None], float("-inf"))  # [B, H, T, S]
        return bias.to(dtype)

    def _attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: KVCache,
        layer: int,
        qkv_weight: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, Q = attn.n_head, attn.n_kv_head, attn.head_dim
        if qkv_weight is not None:
            bias = (
                None
                if attn.q_proj.bias is None
                else torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            )
            qkv = F.linear(x, qkv_weight, bias).view(B, T, H + 2 * K, Q)
            q, k, v = (t.transpose(1, 2) for t in qkv.split((H, K, K), dim=2))  # [B, H or K, T, Q]
        else:
            q = attn.q_proj(x).view(B, T, H, Q).transpose(1, 2)  # [B, H, T, Q]
            k = attn.k_proj(x).view(B, T, K, Q).transpose(1, 2)  # [B, K, T, Q]
            v = attn.v_proj(x).view(B, T, K, Q).transpose(1, 2)  # [B, K, T, Q]
        if attn.q_norm is not None:
            q, k = _norm(attn.q_norm, q), _norm(attn.k_norm, k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k, v = cache.update(layer, k, v)  # [B, K, S, Q]
        if K != H:
            k = k.repeat_interleave(H // K, dim=1)  # [B, H, S, Q]
            v = v.repeat_interleave(H // K, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, Q]
        return attn.o_proj(y.transpose(1, 2).reshape(B, T, H * Q))

    def _mlp(self, mlp: nn.Module, x: torch.Tensor, gate_up: torch.Tensor | None) -> torch.Tensor:
        if gate_up is None:
            return mlp(x)
        bias = None if mlp.up_proj.bias is None else torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias])
        g, u = F.linear(x, gate_up, bias).chunk(2, dim=-1)  # [B, T, F] each
        return mlp.down_proj(F.silu(g) * u)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a norm layer; RMSNorm through ``F.rms_norm`` (one kernel, any float dtype, no autograd)."""
    if isinstance(norm, nn.RMSNorm):
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    return norm(x)


def _cat_linears(*linears: nn.Module | None) -> torch.Tensor | None:
    """The row-concatenated weight of plain ``nn.Linear`` layers, or None (a missing or wrapped layer)."""
    if any(type(lin) is not nn.Linear for lin in linears):
        return None
    return torch.cat([lin.weight.detach() for lin in linears]).contiguous()
