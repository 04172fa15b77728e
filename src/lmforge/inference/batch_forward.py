"""The decoder's forward pass for inference on a ragged batch: left padding, per-row positions, one cache.

``Decoder.forward(idx, cache)`` gives every row the same positions, which is right for one prompt (or
several of equal length) but not for prompts of different lengths. ``RaggedForward`` runs the same
weights over a *left-padded* batch: row ``b`` has ``pad[b]`` padding columns before its prompt, so every
prompt ends at the same column and one shared cache position serves all rows. Each row's tokens get
their true positions (column minus ``pad[b]``), and padding columns are masked out of every query's
keys. The math is the decoder's (decoder.py lists it: RoPE, learned, sinusoidal and ALiBi positions,
GQA, QK-norm, every norm and MLP kind), read from the decoder's own modules, so a LoRA-wrapped projection
still works; it is written again here only because the decoder's forward has no per-row positions.

Speed (cached decoding at small batch is bound by per-op overhead and weight reads; measurements in
docs/performance.md, "Decoding"): for plain ``nn.Linear`` projections q/k/v and gate/up run as one
matmul each over concatenated weights, built by ``refresh()`` and rebuilt only when a parameter changed
since (tensor version counters, so an optimiser step between generations is seen); residual additions
are fused into the o_proj/down_proj matmuls; only the last position's logits are computed
when ``last_only``; a batch without padding (one prompt, or prompts of equal length) takes its
positions as a slice and needs no mask. RoPE is one complex multiply: the rows of q and k are permuted
once so each half-split pair (i, i + Q/2) is adjacent (the decoder's training path does the same); keys
are cached in that order, and since q and k are permuted alike their dot products are unchanged. In
fp32 the rotated keys are written straight into the cache (``torch.mul(..., out=)``), with no copy.
Wrapped projections (e.g. LoRA) keep their modules and have their outputs permuted instead.

fp32 matmuls on a CPU (still exact: fp32 products, only the rounding order differs) skip ``F.linear``,
whose MKL kernels are slow for the few rows a decode step has (a matrix-vector product reads the
weights at ~60% of the rate of a two-column product here): at most ``FEW_ROWS`` rows run as
``(w @ x.T).T`` with one row doubled, more rows through oneDNN's prepacked linear (the kernel Inductor
uses on CPUs; each weight packed once per ``refresh()``, one extra copy of it in memory), where the
residual add is fused too. A weight is packed on its second call with more rows (so a batch-1
decode, whose only such call is its prefill, never pays for it). Without oneDNN, ``F.linear``/``addmm``.

``weights="int8"`` (opt-in, not exact): every plain projection and ``lm_head`` whose input width is a
multiple of 16 is quantised once per ``refresh()`` to int8 with one fp32 scale per output row
(symmetric, round to nearest), and multiplied by ``torch._weight_int8pack_mm`` with bf16 inputs; the
residual stream, norms, RoPE, attention and the cache stay in the model's dtype. A decode step is a
pass over every weight, so a quarter of the bytes is most of the speed-up; outputs are close to, not
equal to, the exact model's (docs/performance.md gives the greedy agreement).

Shape notation: B batch, T new tokens, S filled cache columns, D n_embd, H heads, K kv heads, Q head_dim.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.decoder import Decoder
from lmforge.model.kv_cache import KVCache

WEIGHT_FORMATS = ("exact", "int8")
FEW_ROWS = 2  # exact fp32 CPU matmuls of at most this many rows take ``_few_rows`` (module docstring)
PACK_ROWS = 8  # the row count oneDNN packs weights for


class RaggedForward:
    """Cached forward of a ``Decoder`` over a left-padded batch (module docstring).

    Args:
        model: the decoder; its parameters are read at every call (only fused copies are kept).
        weights: ``"exact"`` (the model's own weights) or ``"int8"`` (weight-only int8, module docstring).

    Raises:
        TypeError: ``model`` is not a ``Decoder``.
        ValueError: an unknown ``weights`` format.

    Use: ``new_cache(pad, max_len)``, ``refresh()``, then ``__call__(idx, cache)`` for the prefill and
    each decode step.
    """

    def __init__(self, model: Decoder, weights: str = "exact"):
        if not isinstance(model, Decoder):
            raise TypeError(f"RaggedForward needs an lmforge Decoder, got {type(model).__name__}")
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights: expected one of {WEIGHT_FORMATS}, got {weights!r}")
        self.model = model
        self.cfg = model.config
        self.weights = weights
        self._layers: list[_Layer] = []
        self._head: _Matmul | None = None
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
        """(Re)build the fused weights if any parameter changed since the last build (a new parameter,
        e.g. a LoRA adapter applied after the engine was made, counts as a change)."""
        key = tuple((id(p), p.data_ptr(), p._version) for p in self.model.parameters())
        if key != self._key:
            int8 = self.weights == "int8"
            perm = self._perm if self.cfg.pos == "rope" else None
            self._layers = [_Layer(b, perm, int8) for b in self.model.blocks]
            self._head = _Matmul(self.model.lm_head.weight.detach(), None, int8)
            if self._freqs is not None:
                self._freqs = self._freqs.to(self.model.tok_emb.weight.device)
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
        pad_min, pad_max = (int(v) for v in torch.aminmax(pad))
        if start + T - pad_min > cfg.block_size:
            raise ValueError(f"a row reaches position {start + T - pad_min} > block_size {cfg.block_size}")
        ragged = pad_max > 0
        pos = None
        if ragged:
            cols = torch.arange(start, start + T, device=idx.device)  # [T]
            pos = (cols[None, :] - pad[:, None]).clamp_(min=0)  # [B, T] true positions (pad columns: 0)
        x = F.embedding(idx, model.tok_emb.weight)  # [B, T, D]
        if cfg.scale_emb:
            x = x * torch.tensor(cfg.n_embd**0.5, dtype=x.dtype)  # as Decoder.hidden_states
        if model.pos_emb is not None:
            x = x + (model.pos_emb(pos) if ragged else model.pos_emb.weight[start : start + T])
        elif cfg.pos == "sinusoidal":
            x = x + (model.pos_table[pos] if ragged else model.pos_table[start : start + T]).to(x.dtype)
        freqs = None
        if self._freqs is not None:  # [B or 1, T, 1, Q/2] complex
            freqs = self._freqs[pos][:, :, None] if ragged else self._freqs[start : start + T][None, :, None]
        mask = self._mask(start, T, pad, ragged, x.dtype)
        ks, vs = cache.k.unbind(0), cache.v.unbind(0)  # per-layer views [B, K, max_len, Q]
        x = x.view(B * T, -1)  # the residual stream, [B*T, D]
        for layer, (block, fused) in enumerate(zip(model.blocks, self._layers)):
            h = _norm(block.attn_norm, x)
            x = self._attention(block.attn, fused, h, x, B, freqs, mask, cache, layer, ks[layer], vs[layer])
            x = self._mlp(block.mlp, fused, _norm(block.mlp_norm, x), x)
        cache.advance(T)
        x = x.view(B, T, -1)
        if last_only:
            x = x[:, -1]
        x = _norm(model.norm, x)
        assert self._head is not None
        return self._head(x.reshape(-1, x.shape[-1])).view(B, -1, cfg.vocab_size)  # [B, T or 1, V]

    def _mask(
        self, start: int, T: int, pad: torch.Tensor, ragged: bool, dtype: torch.dtype
    ) -> torch.Tensor | str | None:
        """Attention mask for queries at columns ``start .. start+T-1`` over keys ``0 .. start+T-1``.

        Bool ``[B, 1, T, S]`` (True = attend): causal, and no padding column — except that a padding
        query sees itself, so its (unused) output stays finite. ALiBi gets a float bias instead.
        ``None`` when nothing needs masking (one token step without padding or ALiBi), and the string
        ``"causal"`` for a prefill from column 0 without padding (SDPA's built-in causal mask is faster).
        """
        S = start + T
        alibi = self.cfg.pos == "alibi"
        if not alibi and not ragged:
            if T == 1:
                return None
            if start == 0:
                return "causal"
        keys = torch.arange(S, device=pad.device)  # [S]
        distance = keys[None, :] - torch.arange(start, S, device=pad.device)[:, None]  # [T, S]
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
        B: int,
        freqs: torch.Tensor | None,
        mask: torch.Tensor | str | None,
        cache: KVCache,
        layer: int,
        k_layer: torch.Tensor,
        v_layer: torch.Tensor,
    ) -> torch.Tensor:
        """``residual + attention(h)`` for ``h`` and ``residual`` ``[B*T, D]``; returns ``[B*T, D]``."""
        T = h.shape[0] // B
        H, K, Q = attn.n_head, attn.n_kv_head, attn.head_dim
        start, end = cache.pos, cache.pos + T
        if fused.qkv is not None:
            q, k, v = fused.qkv(h).view(B, T, H + 2 * K, Q).split((H, K, K), dim=2)
        else:
            h3 = h.view(B, T, -1)
            q, k, v = (
                attn.q_proj(h3).view(B, T, H, Q),
                attn.k_proj(h3).view(B, T, K, Q),
                attn.v_proj(h3).view(B, T, K, Q),
            )
            if freqs is not None:  # wrapped projections: permute their outputs instead of the weights
                q, k = q[..., self._perm], k[..., self._perm]
        if attn.q_norm is not None:
            q = F.rms_norm(q, (Q,), fused.q_norm, attn.q_norm.eps)
            k = F.rms_norm(k, (Q,), fused.k_norm, attn.k_norm.eps)
        if freqs is not None and k.dtype == k_layer.dtype == torch.float32:  # rotate k into the cache
            k_slot = k_layer[:, :, start:end].transpose(1, 2)  # [B, T, K, Q] view of the cache
            torch.mul(_complex(k), freqs, out=_complex(k_slot))
            v_layer[:, :, start:end].transpose(1, 2).copy_(v)
            keys, values = k_layer[:, :, :end], v_layer[:, :, :end]  # [B, K, S, Q]
            q = torch.view_as_real(_complex(q) * freqs).flatten(-2)
        else:
            if freqs is not None:
                q, k = _rotate(q, freqs), _rotate(k, freqs)
            keys, values = cache.update(layer, k.transpose(1, 2), v.transpose(1, 2))  # [B, K, S, Q]
        q = q.transpose(1, 2)  # [B, H, T, Q]
        if isinstance(mask, str):
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=K != H)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=K != H)
        y = y.transpose(1, 2).reshape(B * T, H * Q)  # [B*T, H*Q]
        if fused.o is not None:
            return fused.o.add(y, residual)
        return residual + attn.o_proj(y)

    def _mlp(self, mlp: nn.Module, fused: _Layer, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + mlp(h)`` for ``[B*T, D]``."""
        if fused.gate_up is None:
            return residual + mlp(h)
        g, u = fused.gate_up(h).chunk(2, dim=-1)  # [B*T, F] each
        h = (F.gelu(g, approximate="tanh") if mlp.kind == "geglu" else F.silu(g)).mul_(u)
        if fused.down is not None:
            return fused.down.add(h, residual)
        return residual + mlp.down_proj(h)


class _Matmul:
    """``x @ w.T (+ b)`` for 2-D ``x``, with the model's weight or its int8 weight-only copy.

    int8: per output row ``scale = max|w| / 127`` and ``w8 = round(w / scale)``; inputs go in as bf16
    (the int8 kernel's fast path) and outputs come back in the input's dtype. Input widths that are not
    a multiple of 16 (the kernel's requirement) keep the exact weight.
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, int8: bool):
        self.w, self.b = w, b
        self.wt = w.t()
        self.w8 = self.scale = self.packed = None
        if int8 and w.shape[1] % 16 == 0:
            scale = w.float().abs().amax(dim=1).clamp_(min=1e-12) / 127  # [N]
            self.w8 = (w.float() / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
            self.scale = scale.to(torch.bfloat16)
            self.w = self.wt = None  # the exact weight is not needed (and not kept alive) here
        # exact fp32 on a CPU: the fast paths below; oneDNN's packed copy is made on the second call
        # with more than FEW_ROWS rows (a batch-1 decode, whose only such call is its prefill, never
        # pays for packing)
        self.fast = w.is_cpu and w.dtype == torch.float32 and self.w8 is None and _onednn_linear()
        self.wide_calls = 0

    def _route(self, x: torch.Tensor) -> str:
        """``"few"``, ``"packed"`` or ``"plain"`` (F.linear / addmm) for input ``x``."""
        if not self.fast or x.dtype != torch.float32:
            return "plain"
        if x.shape[0] <= FEW_ROWS:
            return "few"
        if self.packed is None:
            self.wide_calls += 1
            if self.wide_calls < 2:
                return "plain"
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.w, PACK_ROWS)
        return "packed"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.w8 is not None:
            y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.w8, self.scale).to(x.dtype)
            return y if self.b is None else y.add_(self.b)
        route = self._route(x)
        if route == "few":
            y = _few_rows(self.w, x)
            return y if self.b is None else y.add_(self.b)
        if route == "packed":
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")
        return F.linear(x, self.w, self.b)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``, the add fused into the matmul where the kernel allows."""
        if self.w8 is not None or self.b is not None:
            return residual + self(x)
        route = self._route(x)
        if route == "packed":
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, None, "add")
        if route == "few":
            return residual + _few_rows(self.w, x)
        return torch.addmm(residual, x, self.wt)


def _few_rows(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for ``x`` ``[n, D]`` with ``n <= FEW_ROWS``, as ``(w @ x.T).T`` over a row-contiguous
    ``x``; one row is doubled (MKL's two-column product is faster here than its matrix-vector one)."""
    x = x.contiguous()
    if x.shape[0] == 1:
        return torch.mm(w, torch.cat((x, x)).t())[:, :1].t().contiguous()
    return torch.mm(w, x.t()).t().contiguous()


@functools.cache
def _onednn_linear() -> bool:
    """Whether this torch has oneDNN's prepacked fp32 linear (the kernel Inductor uses on CPUs), checked
    on a small product against ``F.linear``."""
    try:
        w, x = torch.randn(24, 16), torch.randn(3, 16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class _Layer:
    """Fused (and, for RoPE, row-permuted) weights of one block; ``None`` where a layer is wrapped."""

    def __init__(self, block: nn.Module, perm: torch.Tensor | None, int8: bool):
        attn, mlp = block.attn, block.mlp
        Q = attn.head_dim

        def rows(lin: nn.Linear, permute: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
            if permute and perm is not None:
                w = w.view(-1, Q, w.shape[-1])[:, perm].reshape(w.shape)
                b = None if b is None else b.view(-1, Q)[:, perm].reshape(b.shape)
            return w, b

        def plain(lin: nn.Module) -> _Matmul | None:
            if type(lin) is not nn.Linear:
                return None
            return _Matmul(lin.weight.detach(), None if lin.bias is None else lin.bias.detach(), int8)

        self.qkv = None
        if all(type(p) is nn.Linear for p in (attn.q_proj, attn.k_proj, attn.v_proj)):
            parts = [rows(attn.q_proj, True), rows(attn.k_proj, True), rows(attn.v_proj, False)]
            bias = None if parts[0][1] is None else torch.cat([b for _, b in parts])
            self.qkv = _Matmul(torch.cat([w for w, _ in parts]).contiguous(), bias, int8)  # [(H+2K)Q, D]
        self.q_norm = self.k_norm = None
        if attn.q_norm is not None:
            self.q_norm, self.k_norm = attn.q_norm.weight.detach(), attn.k_norm.weight.detach()
            if perm is not None:
                self.q_norm, self.k_norm = self.q_norm[perm], self.k_norm[perm]
        self.o, self.down = plain(attn.o_proj), plain(mlp.down_proj)
        self.gate_up = None
        if mlp.gate_proj is not None and type(mlp.gate_proj) is type(mlp.up_proj) is nn.Linear:
            w = torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()]).contiguous()
            bias = None
            if mlp.up_proj.bias is not None:
                bias = torch.cat([mlp.gate_proj.bias.detach(), mlp.up_proj.bias.detach()])
            self.gate_up = _Matmul(w, bias, int8)  # [2F, D]


def _complex(x: torch.Tensor) -> torch.Tensor:
    """View fp32 ``x`` ``[..., Q]`` (RoPE pairs adjacent) as complex ``[..., Q/2]``, without a copy when
    its strides allow."""
    x = x.unflatten(-1, (-1, 2))
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(s % 2 for s in x.stride()[:-1]):
        x = x.contiguous()
    return torch.view_as_complex(x)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``[B, T, n, Q]`` whose pairs are adjacent channels, by complex ``freqs`` ``[B, T, 1, Q/2]``."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a norm layer; RMSNorm through ``F.rms_norm`` (one kernel, any float dtype, no autograd)."""
    if isinstance(norm, nn.RMSNorm):
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    return norm(x)
