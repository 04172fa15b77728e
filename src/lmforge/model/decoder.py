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
- Incremental decoding: ``forward(idx, cache)`` with a ``KVCache`` (see kv_cache.py); positions (all four
  schemes) start at ``cache.pos``.
- Speed (eager training and scoring; same parameters, state-dict keys and math up to float rounding;
  measurements in docs/performance.md). Without a cache, q/k/v come from one matmul over the concatenated
  weights, whose rows put each head's RoPE pair (i, i + Q/2) side by side, so the rotation is one complex
  multiply (permuting the channels of q and k alike leaves q·k unchanged); gate/up are one matmul; the
  residual additions are fused into the o_proj/down_proj matmuls (``addmm``); RMSNorm, SwiGLU and RoPE
  have hand-written backwards with fewer passes over the activations. Under CPU autocast, attention runs
  in fp32 (CPU flash attention is slower in bf16). Cached decoding, projections that are not a plain
  ``nn.Linear`` (e.g. LoRA-wrapped) and ``torch.compile`` (inductor fuses by itself) take plain paths.

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
from lmforge.model.kv_cache import KVCache

INIT_STD = 0.02

# Eager kernels: the composite ops' math with fewer passes over the activations (module docstring, Speed).


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm ``y = x / rms(x) * w`` with a hand-written backward: 3 passes forward, 6 backward.

    With ``xhat = x / rms(x)`` and ``g = dy * w``: ``dx = (g - xhat * mean(g * xhat)) / rms(x)`` and
    ``dw = sum(dy * xhat)`` over positions; ``sum(g * xhat)`` is a matrix-vector product with ``w``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)  # [..., 1]
        rstd = norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        xhat = x * rstd.to(x.dtype)  # [..., D]
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        D = xhat.shape[-1]
        p = dy * xhat  # [..., D]
        dweight = p.reshape(-1, D).sum(0) if ctx.needs_input_grad[1] else None
        dot = (p @ weight.to(p.dtype)).unsqueeze(-1)  # [..., 1] = sum_j dy_j w_j xhat_j
        dx = torch.mul(dy, weight.to(dy.dtype))
        dx.addcmul_(xhat, dot, value=-1.0 / D).mul_(rstd.to(dx.dtype))
        return dx, dweight, None


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (Zhang & Sennrich 2019) computed by ``_RMSNormFunction`` in eager mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or self.weight is None or self.eps is None:
            return super().forward(x)
        return _RMSNormFunction.apply(x, self.weight, self.eps)


class _SwiGLUFunction(torch.autograd.Function):
    """``silu(g) * u`` for ``gu = [g, u]`` (halves of the last dim); backward fills d(gu) in one buffer."""

    @staticmethod
    def forward(ctx, gu: torch.Tensor) -> torch.Tensor:
        g, u = gu.chunk(2, dim=-1)
        s = F.silu(g)
        ctx.save_for_backward(gu, s)
        return s * u

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        gu, s = ctx.saved_tensors
        g, u = gu.chunk(2, dim=-1)
        dgu = torch.empty_like(gu)
        dg, du = dgu.chunk(2, dim=-1)
        torch.mul(dh, s, out=du)
        torch.mul(dh, u, out=dg)
        torch.ops.aten.silu_backward.grad_input(dg, g, grad_input=dg)  # dg *= silu'(g), in place
        return dgu


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` ``[..., Q]`` (fp32, RoPE pairs in adjacent channels) as complex ``[..., Q/2]``."""
    x = x.unflatten(-1, (-1, 2))
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(s % 2 for s in x.stride()[:-1]):
        x = x.contiguous()  # e.g. a gradient from the attention kernel used with dropout
    return torch.view_as_complex(x)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[..., Q]`` (RoPE pairs adjacent) by complex ``freqs`` ``[..., Q/2]``; fp32 result."""
    return torch.view_as_real(_as_complex(x.float()) * freqs).flatten(-2)


class _RopeQKVFunction(torch.autograd.Function):
    """RoPE on the q and k heads of ``qkv`` ``[B, T, H+2K, Q]`` (pairs adjacent), computed in fp32.

    Returns q ``[B, T, H, Q]`` and k ``[B, T, K, Q]`` in ``out_dtype`` (default qkv's) and v, a view of
    qkv. Backward rotates the gradients back straight into one d(qkv) buffer: no zero fills, no sums.
    """

    @staticmethod
    def forward(ctx, qkv, freqs: torch.Tensor, n_head: int, n_kv_head: int, out_dtype: torch.dtype | None):
        ctx.save_for_backward(freqs)
        ctx.heads, ctx.dtype = (n_head, n_kv_head), qkv.dtype
        q, k, v = qkv.split((n_head, n_kv_head, n_kv_head), dim=2)
        out_dtype = out_dtype or qkv.dtype
        return _rotate(q, freqs).to(out_dtype), _rotate(k, freqs).to(out_dtype), v

    @staticmethod
    def backward(ctx, dq: torch.Tensor | None, dk: torch.Tensor | None, dv: torch.Tensor | None):
        (freqs,) = ctx.saved_tensors
        H, K = ctx.heads
        like = next(g for g in (dq, dk, dv) if g is not None)
        dqkv = torch.empty(*like.shape[:2], H + 2 * K, like.shape[-1], dtype=ctx.dtype, device=like.device)
        dq_out, dk_out, dv_out = dqkv.split((H, K, K), dim=2)
        conj = freqs.conj()
        for grad, out in ((dq, dq_out), (dk, dk_out)):
            if grad is None:
                out.zero_()
            elif grad.dtype == out.dtype == torch.float32:  # rotate straight into the buffer
                torch.mul(_as_complex(grad), conj, out=_as_complex(out))
            else:
                out.copy_(_rotate(grad, conj))
        dv_out.zero_() if dv is None else dv_out.copy_(dv)
        return dqkv, None, None, None, None


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """Return the configured normalisation layer over the last ``dim`` features."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(block_size: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin tables of RoPE (Su et al. 2021), each ``[block_size, head_dim // 2]``, in fp32.

    Channel pair i rotates by angle ``pos * theta ** (-2i / head_dim)``.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [Q/2]
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)  # [block_size, Q/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, heads, T, Q]`` by the angles of ``cos``/``sin`` ``[T, Q/2]`` (half-split layout)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _pairs(t: torch.Tensor, n: int, head_dim: int, interleave: bool) -> torch.Tensor:
    """Rows of a projection weight ``[n*Q, D]`` (or bias ``[n*Q]``) as ``[n, Q/2, 2, D or 1]``.

    With ``interleave`` each head's channels i and i + Q/2 (a half-split RoPE pair) become adjacent rows
    (2i, 2i+1); otherwise the order is kept.
    """
    if interleave:
        return t.reshape(n, 2, head_dim // 2, -1).transpose(1, 2)
    return t.reshape(n, head_dim // 2, 2, -1)


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``[B, T, n, Q]`` whose pairs are adjacent channels; ``cos``/``sin`` ``[T, Q/2]``."""
    x = x.unflatten(-1, (-1, 2))  # [B, T, n, Q/2, 2]
    x1, x2 = x[..., 0], x[..., 1]
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def _linear_add(linear: nn.Module, h: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """``residual + linear(h)``, the addition fused into the matmul for a plain bias-free ``nn.Linear``.

    Not under autocast, where the sum must stay in the residual stream's dtype.
    """
    if residual is None:
        return linear(h)
    if type(linear) is nn.Linear and linear.bias is None and not torch.is_autocast_enabled(h.device.type):
        flat = torch.addmm(residual.reshape(-1, residual.shape[-1]), h.flatten(0, -2), linear.weight.t())
        return flat.view(residual.shape)
    return residual + linear(h)


def sinusoidal_table(block_size: int, dim: int) -> torch.Tensor:
    """Fixed absolute encodings of Vaswani et al. 2017, ``[block_size, dim]``: sin on even, cos on odd."""
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [D/2]
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)  # [block_size, D/2]
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)  # [block_size, D/2, 2]
    return table.reshape(block_size, dim).float()  # [block_size, D], interleaved sin, cos


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head ALiBi slopes ``[n_head]`` (Press et al. 2022).

    For n a power of two the slopes are ``2 ** (-8 * i / n)`` for i = 1..n. Otherwise take the slopes of
    the closest smaller power of two m, then every other slope of 2m, as the paper's reference code does.
    """

    m = 2 ** math.floor(math.log2(n_head))
    slopes = [2.0 ** (-8.0 * i / m) for i in range(1, m + 1)]
    slopes += [2.0 ** (-8.0 * i / (2 * m)) for i in range(1, 2 * m + 1)][0::2][: n_head - m]
    return torch.tensor(slopes, dtype=torch.float32)


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

    def _fused_qkv(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, out_dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q ``[B, T, H, Q]``, k and v ``[B, T, K, Q]`` from one matmul over the concatenated weights."""
        B, T, _ = x.shape
        H, K, Q = self.n_head, self.n_kv_head, self.head_dim
        inter = rope is not None  # gather each head's RoPE pairs into adjacent rows of q and k
        heads = ((self.q_proj, H, inter), (self.k_proj, K, inter), (self.v_proj, K, False))
        w = torch.cat([_pairs(p.weight, n, Q, r) for p, n, r in heads]).view(-1, x.shape[-1])  # [(H+2K)Q, D]
        b = None if self.q_proj.bias is None else torch.cat([_pairs(p.bias, n, Q, r) for p, n, r in heads])
        qkv = F.linear(x, w, None if b is None else b.view(-1)).view(B, T, H + 2 * K, Q)
        q, k, v = qkv.split((H, K, K), dim=2)
        if self.q_norm is not None and self.k_norm is not None:
            q = F.rms_norm(q, (Q,), _pairs(self.q_norm.weight, 1, Q, inter).reshape(Q), self.q_norm.eps)
            k = F.rms_norm(k, (Q,), _pairs(self.k_norm.weight, 1, Q, inter).reshape(Q), self.k_norm.eps)
            if inter:
                q, k = _rope_interleaved(q, *rope), _rope_interleaved(k, *rope)
        elif inter and not torch.compiler.is_compiling():
            q, k, v = _RopeQKVFunction.apply(qkv, torch.complex(*rope)[:, None, :], H, K, out_dtype)
        elif inter:
            q, k = _rope_interleaved(qkv[:, :, : H + K], *rope).split((H, K), dim=2)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        layer: int,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` ``[B, T, D]`` over itself (and the cached prefix); return ``[B, T, D]``.

        With ``residual`` (``[B, T, D]``) return ``residual + attention(x)``.
        """
        B, T, _ = x.shape
        # CPU flash attention is slower in bf16 than in fp32 (measured), so under CPU autocast it runs in fp32
        fp32_attention = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if cache is None and all(type(p) is nn.Linear for p in (self.q_proj, self.k_proj, self.v_proj)):
            out_dtype = torch.float32 if fp32_attention else None
            q, k, v = (t.transpose(1, 2) for t in self._fused_qkv(x, rope, out_dtype))  # [B, H or K, T, Q]
        else:
            q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, Q]
            k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, K, T, Q]
            v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, K, T, Q]
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, K, S, Q]
        if self.n_kv_head != self.n_head:
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
            )  # [B, H, T, Q]
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # [B, T, H*Q]
        return _linear_add(self.o_proj, y, residual)


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

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``[B, T, D]`` to ``[B, T, D]`` (plus ``residual`` when given)."""
        if self.kind == "geglu":
            h = F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)
        elif self.gate_proj is not None and type(self.gate_proj) is type(self.up_proj) is nn.Linear:
            w = torch.cat((self.gate_proj.weight, self.up_proj.weight))  # [2F, D]
            b = None if self.up_proj.bias is None else torch.cat((self.gate_proj.bias, self.up_proj.bias))
            gu = F.linear(x, w, b)  # [B, T, 2F]
            if not torch.compiler.is_compiling():
                h = _SwiGLUFunction.apply(gu)
            else:
                g, u = gu.chunk(2, dim=-1)
                h = F.silu(g) * u
        elif self.gate_proj is not None:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.kind == "gelu":
            h = F.gelu(self.up_proj(x))
        elif self.kind == "gelu_tanh":
            h = F.gelu(self.up_proj(x), approximate="tanh")
        else:  # relu2
            h = F.relu(self.up_proj(x)).square()
        return _linear_add(self.down_proj, h, residual)


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
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """Map ``[B, T, D]`` to ``[B, T, D]``."""
        if self.post_norm:
            x = self.attn_norm(x + self.resid_drop(self.attn(x, rope, attn_mask, is_causal, cache, layer)))
            return self.mlp_norm(x + self.resid_drop(self.mlp(x)))
        if self.training and self.resid_drop.p > 0:
            x = x + self.resid_drop(self.attn(self.attn_norm(x), rope, attn_mask, is_causal, cache, layer))
            return x + self.resid_drop(self.mlp(self.mlp_norm(x)))
        x = self.attn(self.attn_norm(x), rope, attn_mask, is_causal, cache, layer, residual=x)
        return self.mlp(self.mlp_norm(x), residual=x)


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
        # Fixed tables are recomputed from the config, never saved (persistent=False).
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # [block_size, Q/2]
            self.register_buffer("rope_sin", sin, persistent=False)  # [block_size, Q/2]
        elif cfg.pos == "sinusoidal":
            table = sinusoidal_table(cfg.block_size, cfg.n_embd)
            self.register_buffer("pos_table", table, persistent=False)  # [block_size, D]
        elif cfg.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)  # [H]
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

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty ``KVCache`` for this model's shape, dtype and device (``max_len`` default block_size)."""
        cfg = self.config
        weight = self.tok_emb.weight
        return KVCache(
            batch_size,
            max_len or cfg.block_size,
            cfg.n_layer,
            cfg.kv_heads,
            cfg.head_dim,
            dtype=weight.dtype,
            device=weight.device,
        )

    def _attention_mask(
        self, start: int, T: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor | None, bool]:
        """Mask for T queries at absolute positions start..start+T-1 over keys 0..start+T-1.

        Returns ``(attn_mask, is_causal)`` for ``F.scaled_dot_product_attention``: ALiBi gets a float
        bias ``[1, H, T, S]`` (``-slope * distance``, ``-inf`` above the diagonal); otherwise the cheap
        built-in causal mask when there is no prefix, nothing for one new token (it sees every key),
        and a boolean ``[T, S]`` mask for a multi-token chunk after a prefix.
        """
        S = start + T
        if self.config.pos != "alibi":
            if start == 0:
                return None, True
            if T == 1:
                return None, False
        q_pos = torch.arange(start, S, device=device)
        k_pos = torch.arange(S, device=device)
        distance = k_pos[None, :] - q_pos[:, None]  # [T, S]; <= 0 where a query may attend
        if self.config.pos != "alibi":
            return distance <= 0, False
        bias = self.alibi_slopes[:, None, None] * distance[None].to(torch.float32)  # [H, T, S]
        bias = bias.masked_fill(distance[None] > 0, float("-inf"))
        return bias[None].to(dtype), False  # [1, H, T, S]

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` for token ids ``idx`` ``[B, T]``: ``lm_head(hidden_states)``."""
        return self.lm_head(self.hidden_states(idx, cache))  # [B, T, V]

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states ``[B, T, D]`` (after the final norm, before ``lm_head``) for ``idx`` ``[B, T]``.

        With a ``cache`` the tokens are taken to sit at positions ``cache.pos ..`` after the cached
        prefix; their keys and values are appended and ``cache.pos`` advances by T.

        Raises:
            ValueError: ``idx`` is not a 2-D integer tensor, ``cache.pos + T`` exceeds ``block_size``,
                or the cache does not fit the batch.
        """
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"idx must be a [B, T] integer tensor, got {tuple(idx.shape)} {idx.dtype}")
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens (cache position {start} + {T} new) exceeds "
                f"block_size {self.config.block_size}"
            )
        if cache is not None:
            cache.check(B, T)
        x = self.tok_emb(idx)  # [B, T, D]
        if self.config.scale_emb:
            x = x * torch.tensor(self.config.n_embd**0.5, dtype=x.dtype)  # rounded to x's dtype, as Gemma
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))  # [T, D] broadcast
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_table[start : start + T].to(x.dtype)  # [T, D] broadcast
        x = self.drop(x)
        rope = None
        if self.config.pos == "rope":
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])  # [T, Q/2] each
        attn_mask, is_causal = self._attention_mask(start, T, x.dtype, x.device)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, attn_mask, is_causal, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)  # [B, T, D]

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
