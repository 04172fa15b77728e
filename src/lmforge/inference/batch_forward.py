"""The decoder's forward pass for inference on a ragged batch: left padding, per-row positions, one cache.

``Decoder.forward(idx, cache)`` gives every row the same positions, which is right for one prompt (or
several of equal length) but not for prompts of different lengths. ``RaggedForward`` runs the same
weights over a *left-padded* batch: row ``b`` has ``pad[b]`` padding columns before its prompt, so every
prompt ends at the same column and one shared cache position serves all rows. Each row's tokens get
their true positions (column minus ``pad[b]``), and padding columns are masked out of every query's
keys. The math is the decoder's (decoder.py lists it: RoPE, learned, sinusoidal and ALiBi positions,
GQA, QK-norm, every norm and MLP kind), read from the decoder's own modules, so a LoRA-wrapped projection
still works; it is written again here only because the decoder's forward has no per-row positions.

Speed (cached decoding at small batch is bound by per-op overhead and weight reads): for plain
``nn.Linear`` projections q/k/v and gate/up run as one matmul each over concatenated weights, built by
``refresh()`` and rebuilt only when a parameter changed since (tensor version counters, so an optimiser
step between generations is seen); residual additions are fused into the o_proj/down_proj matmuls
(``addmm``); only the last position's logits are computed when ``last_only``. RoPE is one complex
multiply: the rows of q and k are permuted once so each half-split pair (i, i + Q/2) is adjacent
(the decoder's training path does the same); keys are cached in that order, and since q and k are
permuted alike their dot products are unchanged. Wrapped projections (e.g. LoRA) keep their modules
and have their outputs permuted instead.

Shape notation: B batch, T new tokens, S filled cache columns, D n_embd, H heads, K kv heads, Q head_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.decoder import Decoder
from lmforge.model.kv_cache import KVCache


class RaggedForward:
    """Cached forward of a ``Decoder`` over a left-padded batch (module docstring).

    Args:
        model: the decoder; its parameters are read at every call (only fused copies are kept).

    Use: ``new_cache(pad, max_len)``, ``refresh()``, then ``__call__(idx, cache)`` for the prefill and
    each decode step.
    """

    def __init__(self, model: Decoder):
        if not isinstance(model, Decoder):
            raise TypeError(f"RaggedForward needs an lmforge Decoder, got {type(model).__name__}")
        self.model = model
        self.cfg = model.config
        self._layers: list[_Layer] = []
        self._key: tuple = ()
        Q = self.cfg.head_dim
        self._perm = torch.arange(Q).view(2, Q // 2).t().reshape(Q)  # channel order (0, Q/2, 1, Q/2+1, ...)
        self._freqs = None
        if self.cfg.pos == "rope":
            self._freqs = torch.complex(model.rope_cos, model.rope_sin)  # [block_size, Q/2]

    def new_cache(self, pad: torch.Tensor, max_len: int) -> KVCache:
        """A cache of ``max_len`` columns for ``len(pad)`` rows; ``pad[b]`` = padding columns of row b."""
        cache = self.model.new_kv_cache(len(pad), max_len)
        cache.pad = pad.to(device=cache.k.device, dtype=torch.long)  # [B]
        return cache

    def refresh(self) -> None:
        """(Re)build the fused weights if any block parameter changed since the last build (a new
        parameter, e.g. a LoRA adapter applied after the engine was made, counts as a change)."""
        key = tuple(
            (id(p), p.data_ptr(), p._version) for block in self.model.blocks for p in block.parameters()
        )
        if key != self._key:
            rope = self.cfg.pos == "rope"
            self._layers = [_Layer(b, self._perm if rope else None) for b in self.model.blocks]
            self._key = key

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, cache: KVCache, last_only: bool = False) -> torch.Tensor:
        """Logits ``[B, T, V]`` (``[B, 1, V]`` with ``last_only``) of tokens ``idx`` ``[B, T]`` written at
        cache columns ``cache.pos ..``.

        Raises:
            ValueError: a row's last position would reach ``block_size``, or the cache is full.
        """
        model, cfg = self.model, self.cfg
        if not self._layers:
            self.refresh()
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
        freqs = None
        if self._freqs is not None:
            freqs = self._freqs.to(x.device)[pos][:, :, None]  # [B, T, 1, Q/2] complex
        mask = self._mask(cols, pad, x.dtype)
        for layer, (block, fused) in enumerate(zip(model.blocks, self._layers)):
            x = self._attention(block.attn, fused, _norm(block.attn_norm, x), x, freqs, mask, cache, layer)
            x = self._mlp(block.mlp, fused, _norm(block.mlp_norm, x), x)
        cache.advance(T)
        if last_only:
            x = x[:, -1:]
        return model.lm_head(_norm(model.norm, x))  # [B, T or 1, V]

    def _mask(self, cols: torch.Tensor, pad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | str | None:
        """Attention mask for queries at columns ``cols`` over keys ``0 .. cols[-1]``.

        Bool ``[B, 1, T, S]`` (True = attend): causal, and no padding column — except that a padding
        query sees itself, so its (unused) output stays finite. ALiBi gets a float bias instead.
        ``None`` when nothing needs masking (one token step without padding or ALiBi), and the string
        ``"causal"`` for a prefill from column 0 without padding (SDPA's built-in causal mask is faster).
        """
        S = int(cols[-1]) + 1
        alibi = self.cfg.pos == "alibi"
        if not alibi and int(pad.max()) == 0:
            if len(cols) == 1:
                return None
            if int(cols[0]) == 0:
                return "causal"
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
        fused: _Layer,
        h: torch.Tensor,
        residual: torch.Tensor,
        freqs: torch.Tensor | None,
        mask: torch.Tensor | str | None,
        cache: KVCache,
        layer: int,
    ) -> torch.Tensor:
        """``residual + attention(h)``, ``[B, T, D]``."""
        B, T, _ = h.shape
        H, K, Q = attn.n_head, attn.n_kv_head, attn.head_dim
        if (
            fused.qkv is not None and attn.q_norm is None and freqs is not None
        ):  # the common case: one rotation
            qk, v = F.linear(h, fused.qkv, fused.qkv_bias).view(B, T, H + 2 * K, Q).split((H + K, K), dim=2)
            q, k = _rotate(qk, freqs).split((H, K), dim=2)
            freqs = None  # done
        elif fused.qkv is not None:
            q, k, v = F.linear(h, fused.qkv, fused.qkv_bias).view(B, T, H + 2 * K, Q).split((H, K, K), dim=2)
        else:
            q, k, v = (
                attn.q_proj(h).view(B, T, H, Q),
                attn.k_proj(h).view(B, T, K, Q),
                attn.v_proj(h).view(B, T, K, Q),
            )
            if freqs is not None:  # wrapped projections: permute their outputs instead of the weights
                q, k = q[..., self._perm], k[..., self._perm]
        if attn.q_norm is not None:
            q = F.rms_norm(q, (Q,), fused.q_norm, attn.q_norm.eps)
            k = F.rms_norm(k, (Q,), fused.k_norm, attn.k_norm.eps)
        if freqs is not None:
            q, k = _rotate(q, freqs), _rotate(k, freqs)
        k, v = cache.update(layer, k.transpose(1, 2), v.transpose(1, 2))  # [B, K, S, Q]
        if K != H:
            k = k.repeat_interleave(H // K, dim=1)  # [B, H, S, Q]
            v = v.repeat_interleave(H // K, dim=1)
        q = q.transpose(1, 2)  # [B, H, T, Q]
        if isinstance(mask, str):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, Q]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return _linear_add(attn.o_proj, y.transpose(1, 2).reshape(B, T, H * Q), residual)

    def _mlp(self, mlp: nn.Module, fused: _Layer, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + mlp(h)``, ``[B, T, D]``."""
        if fused.gate_up is None:
            return residual + mlp(h)
        g, u = F.linear(h, fused.gate_up, fused.gate_up_bias).chunk(2, dim=-1)  # [B, T, F] each
        return _linear_add(mlp.down_proj, F.silu(g).mul_(u), residual)


class _Layer:
    """Fused (and, for RoPE, row-permuted) weights of one block; ``None`` where a layer is wrapped."""

    def __init__(self, block: nn.Module, perm: torch.Tensor | None):
        attn, mlp = block.attn, block.mlp
        Q = attn.head_dim

        def rows(lin: nn.Linear, permute: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
            if permute and perm is not None:
                w = w.view(-1, Q, w.shape[-1])[:, perm].reshape(w.shape)
                b = None if b is None else b.view(-1, Q)[:, perm].reshape(b.shape)
            return w, b

        self.qkv = self.qkv_bias = None
        if all(type(p) is nn.Linear for p in (attn.q_proj, attn.k_proj, attn.v_proj)):
            parts = [rows(attn.q_proj, True), rows(attn.k_proj, True), rows(attn.v_proj, False)]
            self.qkv = torch.cat([w for w, _ in parts]).contiguous()  # [(H+2K)Q, D]
            if parts[0][1] is not None:
                self.qkv_bias = torch.cat([b for _, b in parts])
        self.q_norm = self.k_norm = None
        if attn.q_norm is not None:
            self.q_norm, self.k_norm = attn.q_norm.weight.detach(), attn.k_norm.weight.detach()
            if perm is not None:
                self.q_norm, self.k_norm = self.q_norm[perm], self.k_norm[perm]
        self.gate_up = self.gate_up_bias = None
        if mlp.gate_proj is not None and type(mlp.gate_proj) is type(mlp.up_proj) is nn.Linear:
            self.gate_up = torch.cat(
                [mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()]
            ).contiguous()
            if mlp.up_proj.bias is not None:
                self.gate_up_bias = torch.cat([mlp.gate_proj.bias.detach(), mlp.up_proj.bias.detach()])


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``[B, T, n, Q]`` whose pairs are adjacent channels, by complex ``freqs`` ``[B, T, 1, Q/2]``."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


def _linear_add(linear: nn.Module, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + linear(h)``, the addition fused into the matmul for a plain bias-free ``nn.Linear``."""
    if type(linear) is nn.Linear and linear.bias is None:
        flat = torch.addmm(
            residual.reshape(-1, residual.shape[-1]), h.reshape(-1, h.shape[-1]), linear.weight.t()
        )
        return flat.view(residual.shape)
    return residual + linear(h)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a norm layer; RMSNorm through ``F.rms_norm`` (one kernel, any float dtype, no autograd)."""
    if isinstance(norm, nn.RMSNorm):
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    return norm(x)
