"""Position encodings of the decoder and encoder: RoPE tables and rotation (half-split layout),
fixed sinusoidal encodings and ALiBi slopes (decoder.py's module docstring says which is which)."""

from __future__ import annotations

import math
from typing import Any

import torch


def rope_tables(block_size: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin tables of RoPE (Su et al. 2021), each ``[block_size, head_dim // 2]``, in fp32.

    Channel pair i rotates by angle ``pos * theta ** (-2i / head_dim)``.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [Q/2]
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)  # [block_size, Q/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, heads, T, Q]`` by the angles of ``cos``/``sin`` ``[T, Q/2]`` (or per row
    ``[B, T, Q/2]``), half-split layout."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, Q/2]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


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


def register_position_tables(module: torch.nn.Module, cfg: Any) -> None:
    """Register on ``module`` the fixed position tables ``cfg.pos`` needs (decoder and encoder alike).

    ``rope``: ``rope_cos``/``rope_sin`` ``[block_size, Q/2]``; ``sinusoidal``: ``pos_table``
    ``[block_size, D]``; ``alibi``: ``alibi_slopes`` ``[H]``; ``learned``/``none``: nothing. The tables
    are recomputed from the config, never saved (``persistent=False``)."""
    if cfg.pos == "rope":
        cos, sin = rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_theta)
        module.register_buffer("rope_cos", cos, persistent=False)
        module.register_buffer("rope_sin", sin, persistent=False)
    elif cfg.pos == "sinusoidal":
        module.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
    elif cfg.pos == "alibi":
        module.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
