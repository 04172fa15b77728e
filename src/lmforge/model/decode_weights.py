"""Weights prepared once for cached decoding: the decoder's q/k/v and gate/up as single matrices,
kept between calls, and the matmul kernels that are fastest for the few rows a decode step has.

``Decoder.forward(idx, cache, weights=DecodeWeights(model))`` runs the decoder's own forward (decoder.py:
one forward for training, scoring and decoding) with these matrices in place of the per-call
concatenation the training path does. ``refresh()`` rebuilds them only when a parameter changed since
the last build (tensor version counters, so an optimiser step between generations is seen; a LoRA adapter
applied later counts as a new parameter). A projection that is not a plain ``nn.Linear`` (e.g.
LoRA-wrapped) gets no matrix here: the decoder calls its module.

Speed (cached decoding at small batch is bound by per-op overhead and weight reads; measurements in
docs/performance.md, "Decoding"). fp32 matmuls on a CPU (still exact: fp32 products, only the rounding
order differs) skip ``F.linear``, whose MKL kernels are slow for the few rows a decode step has (a
matrix-vector product reads the weights at ~60% of the rate of a two-column product here): at most
``FEW_ROWS`` rows run as ``(w @ x.T).T`` with one row doubled, more rows through oneDNN's prepacked
linear (the kernel Inductor uses on CPUs; each weight packed once per build, one extra copy of it in
memory), where the residual add is fused too. A weight is packed on its second call with more rows (so a
batch-1 decode, whose only such call is its prefill, never pays for it). Without oneDNN,
``F.linear``/``addmm``.

``weights="int8"`` (opt-in, not exact): every plain projection and ``lm_head`` whose input width is a
multiple of 16 is quantised once per build to int8 with one fp32 scale per output row (symmetric, round
to nearest), and multiplied by ``torch._weight_int8pack_mm`` with bf16 inputs; the residual stream,
norms, RoPE, attention and the cache stay in the model's dtype. A decode step is a pass over every
weight, so a quarter of the bytes is most of the speed-up; outputs are close to, not equal to, the exact
model's (docs/performance.md gives the greedy agreement).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FORMATS = ("exact", "int8")
FEW_ROWS = 2  # exact fp32 CPU matmuls of at most this many rows take ``_few_rows`` (module docstring)
PACK_ROWS = 8  # the row count oneDNN packs weights for


class DecodeWeights:
    """The prepared matrices of one decoder (module docstring).

    Args:
        model: the ``Decoder``; its parameters are read at every ``refresh()``.
        weights: ``"exact"`` (the model's own weights) or ``"int8"`` (weight-only int8).

    Raises:
        ValueError: an unknown ``weights`` format.

    Attributes: ``layers`` (one ``LayerWeights`` per block) and ``head`` (``lm_head``), built by
    ``refresh()``, which the caller runs before a generation.
    """

    def __init__(self, model: nn.Module, weights: str = "exact"):
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights: expected one of {WEIGHT_FORMATS}, got {weights!r}")
        self.model, self.weights = model, weights
        self.layers: list[LayerWeights] = []
        self.head: Matmul | None = None
        self._key: tuple = ()

    def refresh(self) -> DecodeWeights:
        """(Re)build the matrices if any parameter changed since the last build; returns self."""
        key = tuple((id(p), p.data_ptr(), p._version) for p in self.model.parameters())
        if key != self._key:
            int8 = self.weights == "int8"
            rope = self.model.config.pos == "rope"
            self.layers = [LayerWeights(b, rope, int8) for b in self.model.blocks]
            self.head = Matmul(self.model.lm_head.weight.detach(), None, int8)
            self._key = key
        return self


class LayerWeights:
    """One block's matrices, ``None`` where a projection is wrapped: ``qkv`` (rows in the decoder's
    fused order, ``Attention.qkv_weight``), ``o``, ``gate_up`` (``MLP.gate_up_weight``), ``down``."""

    def __init__(self, block: nn.Module, rope: bool, int8: bool):
        attn, mlp = block.attn, block.mlp

        def matmul(wb: tuple[torch.Tensor, torch.Tensor | None] | None) -> Matmul | None:
            if wb is None:
                return None
            w, b = wb
            return Matmul(w.detach().contiguous(), None if b is None else b.detach(), int8)

        def plain(lin: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
            return (lin.weight, lin.bias) if type(lin) is nn.Linear else None

        self.qkv = matmul(attn.qkv_weight(rope))
        self.o, self.down = matmul(plain(attn.o_proj)), matmul(plain(mlp.down_proj))
        self.gate_up = matmul(mlp.gate_up_weight())


class Matmul:
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
            return residual + _few_rows(self.w, x, contiguous=False)  # the sum is contiguous
        return torch.addmm(residual, x, self.wt)


def _few_rows(w: torch.Tensor, x: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
    """``x @ w.T`` for ``x`` ``[n, D]`` with ``n <= FEW_ROWS``, as ``(w @ x.T).T`` over a row-contiguous
        ``x``; one row is doubled (MKL's two-column product is faster here than its matrix-vector one). With
        ``contiguous=False`` the result may be a strided view, and for one row 1-D ``[N]`` (for a consumer
    that broadcasts it once, such as the residual sum)."""
    if not x.is_contiguous():  # a check, not an op: decode steps call this 4 times per layer
        x = x.contiguous()
    if x.shape[0] == 1:
        y = torch.mm(w, torch.cat((x, x)).t())  # [N, 2], two equal columns
        return y[:, :1].t().contiguous() if contiguous else y[:, 0]  # [1, N], or [N] strided
    y = torch.mm(w, x.t())
    return y.t().contiguous() if contiguous else y.t()


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
