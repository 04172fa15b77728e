"""Preallocated key/value cache for incremental decoding: prefill a prompt once, then decode token by token.

The idea follows nanochat's engine: one tensor per kind holds every layer's keys (or values), allocated
once at ``max_len``; each forward writes its new positions in place and attends over the filled prefix.

Every row of the batch shares one column counter ``pos``. Ragged batches (prompts of different lengths)
are left-padded so they end at one column: ``pad[b]`` counts row b's padding columns
(``Decoder.new_kv_cache(B, max_len, pad)``), and ``Decoder.forward(idx, cache)`` gives row b the
positions ``column - pad[b]`` and masks its padding. Without ``pad`` every row has positions ``pos ..``.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for ``batch_size`` sequences of up to ``max_len`` tokens.

    Keys are stored after QK-norm and RoPE, i.e. exactly as attention consumes them.

    Shapes: ``k``/``v`` are ``[n_layer, B, kv_heads, max_len, head_dim]``; ``pos`` is the number of
    positions already filled (the absolute position of the next token).

    Use: the decoder calls ``update(layer, k, v)`` (or writes ``slots`` in place, then reads ``filled``)
    in each layer and ``advance(T)`` once per forward.
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        n_layer: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        for name, value in (
            ("batch_size", batch_size),
            ("max_len", max_len),
            ("n_layer", n_layer),
            ("kv_heads", kv_heads),
            ("head_dim", head_dim),
        ):
            if value <= 0:
                raise ValueError(f"KVCache {name} must be > 0, got {value}")
        self.batch_size = batch_size
        self.max_len = max_len
        shape = (n_layer, batch_size, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0
        self.pad: torch.Tensor | None = None  # [B] left-padding columns per row (ragged batches only)
        self._views_of: tuple[torch.Tensor, torch.Tensor] | None = None

    def _layer_views(self) -> tuple[list[torch.Tensor], ...]:
        """Per-layer views of ``k``/``v`` (``[B, K, max_len, Q]``) and their ``[B, max_len, K, Q]``
        transposes, made once per tensor (``rows.select_rows`` replaces the tensors): a decode step then
        narrows a ready view instead of selecting the layer and transposing it again in every layer."""
        if self._views_of is None or self._views_of[0] is not self.k or self._views_of[1] is not self.v:
            keys, values = list(self.k.unbind(0)), list(self.v.unbind(0))
            self._views = (
                keys,
                values,
                [t.transpose(1, 2) for t in keys],
                [t.transpose(1, 2) for t in values],
            )
            self._views_of = (self.k, self.v)
        return self._views

    def check(self, batch_size: int, n_new: int) -> None:
        """Raise ValueError unless ``n_new`` tokens for ``batch_size`` rows fit at the current position."""
        if batch_size != self.batch_size:
            raise ValueError(f"batch has {batch_size} rows but the KV cache was built for {self.batch_size}")
        if self.pos + n_new > self.max_len:
            raise ValueError(
                f"KV cache full: position {self.pos} + {n_new} new tokens exceeds max_len {self.max_len}"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ``[B, kv_heads, T, head_dim]`` at positions ``pos .. pos+T-1`` of ``layer``.

        Returns the layer's keys and values for positions ``0 .. pos+T-1``, each
        ``[B, kv_heads, pos+T, head_dim]`` (views into the cache). Does not move ``pos``.
        """
        end = self.pos + k.shape[2]
        layer_keys, layer_values = self._layer_views()[:2]
        keys, values = layer_keys[layer], layer_values[layer]  # [B, kv_heads, max_len, head_dim]
        keys.narrow(2, self.pos, k.shape[2]).copy_(k)  # narrow, not indexing: fewer ops per decode step
        values.narrow(2, self.pos, k.shape[2]).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def slots(self, layer: int, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``[B, n_new, kv_heads, head_dim]`` of ``layer``'s key and value columns ``pos ..
        pos+n_new-1``, to be written in place (then ``filled``), instead of ``update``."""
        k, v = self._layer_views()[2:]
        return k[layer].narrow(1, self.pos, n_new), v[layer].narrow(1, self.pos, n_new)

    def filled(self, layer: int, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys and values of positions ``0 .. pos+n_new-1`` (views), after ``slots``."""
        end = self.pos + n_new
        k, v = self._layer_views()[:2]
        return k[layer].narrow(2, 0, end), v[layer].narrow(2, 0, end)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (called once per forward, after every layer)."""
        self.pos += n

    def shift_rows(self, shifts: list[int]) -> None:
        """Move each row ``b``'s filled columns ``pad[b] .. pos - shifts[b] - 1`` right by ``shifts[b]``
        so they end at ``pos - 1``, and grow its padding by as much (speculative decoding: a row that
        accepted fewer drafts than its batch-mates is re-aligned to the shared ``pos``). Positions are
        column minus padding, so every kept key keeps its position and its rotation; the freed columns
        become padding. Needs ``pad`` (a ragged cache)."""
        assert self.pad is not None
        pads = self.pad.tolist()
        for b, (d, p) in enumerate(zip(shifts, pads)):
            if d > 0:
                for t in (self.k, self.v):
                    t[:, b, :, p + d : self.pos] = t[:, b, :, p : self.pos - d].clone()
        self.pad = self.pad + torch.tensor(shifts, dtype=self.pad.dtype, device=self.pad.device)

    def drop_left(self, n: int) -> None:
        """Drop the first ``n`` columns, which must be padding in every row: every row moves left by
        ``n``, ``pad`` and ``pos`` shrink by ``n`` (frees columns once shifts have padded all rows)."""
        assert self.pad is not None and n <= int(self.pad.min())
        if n > 0:
            for t in (self.k, self.v):
                t[:, :, :, : self.pos - n] = t[:, :, :, n : self.pos].clone()
            self.pad = self.pad - n
            self.pos -= n

    def reset(self) -> None:
        """Forget every cached position so the cache can serve a new batch of prompts."""
        self.pos = 0
