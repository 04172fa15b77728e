"""Eager kernels of the decoder's fast paths: the composite ops' math with fewer passes over the
activations (decoder.py's module docstring, "Speed"; measurements in docs/performance.md).

- ``RMSNorm`` (``RMSNormFunction``), SwiGLU (``SwiGLUFunction``) and RoPE on fused q/k/v
  (``RopeQKVFunction``) with hand-written backwards; without gradients they run the plain ops.
- ``pairs``: a projection's rows regrouped so each half-split RoPE pair (i, i + Q/2) is adjacent, which
  makes the rotation one complex multiply (q and k permuted alike leave q·k unchanged).
- ``linear_add``: ``residual + linear(h)`` with the addition fused into the matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.decode_weights import Matmul


class RMSNormFunction(torch.autograd.Function):
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
    """``nn.RMSNorm`` (Zhang & Sennrich 2019) computed by ``RMSNormFunction`` when it may need a
    backward (eager, gradients on); otherwise one ``F.rms_norm`` kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None or self.eps is None or torch.compiler.is_compiling():
            return super().forward(x)
        if (
            not torch.is_grad_enabled()
        ):  # straight to the kernel: decoding calls this twice per layer and step
            return torch.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return RMSNormFunction.apply(x, self.weight, self.eps)


class SwiGLUFunction(torch.autograd.Function):
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
    stride = x.stride()
    if stride[-1] != 1 or x.storage_offset() % 2 or any(s % 2 for s in stride[:-1]):
        x = x.contiguous()  # e.g. a gradient from the attention kernel used with dropout
    return torch.view_as_complex(x)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[..., Q]`` (RoPE pairs adjacent) by complex ``freqs`` ``[..., Q/2]``; fp32 result."""
    x = x if x.dtype == torch.float32 else x.float()
    return torch.view_as_real(_as_complex(x) * freqs).view(x.shape)  # view, not flatten: one op fewer


def rope_qkv(
    qkv: torch.Tensor,
    freqs: torch.Tensor,
    n_head: int,
    n_kv_head: int,
    out_dtype: torch.dtype | None,
    k_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``RopeQKVFunction``'s forward without autograd (its ``apply`` costs more than the math when decoding).

    ``k_out`` (fp32 ``[B, T, K, Q]``, e.g. the KV cache's slot): the rotated keys are written there, no
    copy, and it is returned as k."""
    H, HK = n_head, n_head + n_kv_head
    if k_out is not None and qkv.dtype == torch.float32 and qkv.is_contiguous():  # decoding: fewest ops
        c = torch.view_as_complex(qkv.view(*qkv.shape[:-1], -1, 2))  # [B, T, H+2K, Q/2]
        q = torch.view_as_real(c[:, :, :H] * freqs).view(*qkv.shape[:2], H, -1)
        torch.mul(c[:, :, H:HK], freqs, out=_as_complex(k_out))
        return q, k_out, qkv[:, :, HK:]
    q = _rotate(qkv[:, :, :H], freqs)
    if k_out is not None:
        torch.mul(_as_complex(qkv[:, :, H:HK]), freqs, out=_as_complex(k_out))
        return q, k_out, qkv[:, :, HK:]
    k = _rotate(qkv[:, :, H:HK], freqs)
    if out_dtype is not None or qkv.dtype != torch.float32:
        q, k = q.to(out_dtype or qkv.dtype), k.to(out_dtype or qkv.dtype)
    return q, k, qkv[:, :, HK:]


class RopeQKVFunction(torch.autograd.Function):
    """RoPE on the q and k heads of ``qkv`` ``[B, T, H+2K, Q]`` (pairs adjacent), computed in fp32.

    Returns q ``[B, T, H, Q]`` and k ``[B, T, K, Q]`` in ``out_dtype`` (default qkv's) and v, a view of
    qkv. Backward rotates the gradients back straight into one d(qkv) buffer: no zero fills, no sums.
    """

    @staticmethod
    def forward(ctx, qkv, freqs: torch.Tensor, n_head: int, n_kv_head: int, out_dtype: torch.dtype | None):
        ctx.save_for_backward(freqs)
        ctx.heads, ctx.dtype = (n_head, n_kv_head), qkv.dtype
        return rope_qkv(qkv, freqs, n_head, n_kv_head, out_dtype)

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


def pairs(t: torch.Tensor, n: int, head_dim: int, interleave: bool) -> torch.Tensor:
    """Rows of a projection weight ``[n*Q, D]`` (or bias ``[n*Q]``) as ``[n, Q/2, 2, D or 1]``.

    With ``interleave`` each head's channels i and i + Q/2 (a half-split RoPE pair) become adjacent rows
    (2i, 2i+1); otherwise the order is kept.
    """
    if interleave:
        return t.reshape(n, 2, head_dim // 2, -1).transpose(1, 2)
    return t.reshape(n, head_dim // 2, 2, -1)


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``[B, T, n, Q]`` whose pairs are adjacent channels; ``cos``/``sin`` ``[T, Q/2]`` or
    per row ``[B, T, Q/2]``."""
    x = x.unflatten(-1, (-1, 2))  # [B, T, n, Q/2, 2]
    x1, x2 = x[..., 0], x[..., 1]
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)  # [T or B, T, 1, Q/2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def linear_add(
    linear: nn.Module, h: torch.Tensor, residual: torch.Tensor | None, matmul: Matmul | None = None
) -> torch.Tensor:
    """``residual + linear(h)``, the addition fused into the matmul for a plain bias-free ``nn.Linear``.

    Not under autocast, where the sum must stay in the residual stream's dtype. ``matmul``: ``linear``'s
    weight prepared for decoding (decode_weights.py), used instead of the module.
    """
    if matmul is not None and h.dim() == 2:  # cached decoding's flat stream: no views
        return matmul(h) if residual is None else matmul.add(h, residual)
    if matmul is not None:
        out = (
            matmul(h.view(-1, h.shape[-1]))
            if residual is None
            else matmul.add(h.view(-1, h.shape[-1]), residual.view(-1, residual.shape[-1]))
        )
        return out.view(*h.shape[:-1], -1)
    if residual is None:
        return linear(h)
    if type(linear) is nn.Linear and linear.bias is None and not torch.is_autocast_enabled(h.device.type):
        flat = torch.addmm(residual.reshape(-1, residual.shape[-1]), h.flatten(0, -2), linear.weight.t())
        return flat.view(residual.shape)
    return residual + linear(h)
