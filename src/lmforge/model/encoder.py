"""The bidirectional (BERT-style) transformer encoder, built from the decoder's blocks. Every choice is here.

Follows BERT (Devlin et al. 2019) except where marked *departure*. Defaults are in brackets; all but
``n_segments`` are ``ModelConfig`` fields, shared with the decoder so one config describes either model.

- Token embedding ``tok_emb``, plus segment (token-type) embeddings ``seg_emb`` for sentence pairs
  [n_segments=2; 0 = none], added to the token embeddings as in BERT. ``token_type_ids`` default to 0.
- Positions [pos="rope"], every scheme of the decoder, applied without a causal mask:
  * ``learned`` (BERT's choice) and ``sinusoidal``: absolute encodings added to the embedding sum.
  * ``rope``: rotary queries/keys (Su et al. 2021); relative by construction, so symmetric in both
    directions.
  * ``alibi``: a per-head penalty ``-slope * |i - j|`` on the attention scores, the symmetric
    bidirectional form of Press et al. 2022 used by MosaicBERT (Portes et al. 2023); slopes as in the
    decoder.
  Positions count from 0 at the first column, so batches must be right-padded (BERT's convention).
- Blocks: the decoder's ``Block`` (attention, MLP, norms, dropout, GQA, QK-norm: see decoder.py) called
  with ``is_causal=False``. *Departure* [post_norm=False]: pre-norm residual blocks (Xiong et al. 2020)
  with a final ``norm``, where BERT is post-norm (``x = LN(x + f(x))``); pre-norm trains stably without a
  long warm-up and lets encoder and decoder share every block. *Departure* [emb_norm=False]: no norm on
  the embedding sum; under pre-norm the first block's ``attn_norm`` already normalises its input.
  ``post_norm=True`` and ``emb_norm=True`` give BERT's exact form (``attn_norm``/``mlp_norm`` after each
  residual add, ``emb_norm`` on the embedding sum, no final norm: ``norm`` is the identity), used for
  imported BERT-family weights (interop/hf_bert.py).
- Padding: ``attention_mask`` ``[B, T]`` (True = real token) masks padded *keys* in every layer, so
  padded positions never influence real ones. Padded positions still get (meaningless) outputs; a row
  that is all padding attends uniformly instead of producing NaN.
- Output: the final hidden states ``[B, T, D]``; heads (MLM, NSP, classification, scalar) are in heads.py.
- Initialisation: ``Encoder.init_weights``, the decoder's conventions (std 0.02, residual projections
  0.02 / sqrt(2 * n_layer)).

Shape notation: B batch, T tokens, D n_embd, H query heads, V vocab_size.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import INIT_STD, Block, count_params, init_blocks, make_norm
from lmforge.model.positional import register_position_tables


class Encoder(nn.Module):
    """Bidirectional transformer encoder (architecture in the module docstring).

    Args:
        cfg: the model configuration; validated here, and ``vocab_size`` must be > 0.
        n_segments: number of token types (segments) with an embedding; 0 builds none.

    Raises:
        ConfigError: an invalid field, or ``vocab_size`` still 0.
        ValueError: ``n_segments`` < 0.
    """

    def __init__(self, cfg: ModelConfig, n_segments: int = 2):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise ConfigError(
                "vocab_size", f"must be > 0 to build a model, got {cfg.vocab_size}; set it from the tokenizer"
            )
        if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 0:
            raise ValueError(
                f"n_segments must be an integer >= 0 (0 = no segment embeddings), got {n_segments!r}"
            )
        self.config = cfg
        self.n_segments = n_segments
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.seg_emb = nn.Embedding(n_segments, cfg.n_embd) if n_segments else None
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.emb_norm = make_norm(cfg, cfg.n_embd) if cfg.emb_norm else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.Identity() if cfg.post_norm else make_norm(cfg, cfg.n_embd)
        register_position_tables(self, cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter. The one place that states each tensor's init:

        - ``tok_emb.weight``, ``seg_emb.weight``, ``pos_emb.weight`` (learned positions): normal, std 0.02.
        - ``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj`` weights: normal, std 0.02.
        - ``o_proj`` and ``down_proj`` weights (they write into the residual stream): normal, std
          0.02 / sqrt(2 * n_layer) (GPT-2, Radford et al. 2019), as in the decoder.
        - Every linear bias (``bias=True``) and LayerNorm bias: zeros.
        - Every norm gain (emb_norm, attn_norm, mlp_norm, norm, q_norm, k_norm): ones.
        """
        for emb in (self.tok_emb, self.seg_emb, self.pos_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, mean=0.0, std=INIT_STD)
        init_blocks(self, self.blocks, self.config.n_layer)

    def _attention_mask(
        self, attention_mask: torch.Tensor | None, T: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | None:
        """The ``attn_mask`` for ``F.scaled_dot_product_attention`` (never causal).

        Without ALiBi: None when nothing is padded, else a bool ``[B, 1, 1, T]`` that is True at real keys.
        With ALiBi: a float bias ``[1 or B, H, T, T]``, ``-slope * |i - j|``, ``-inf`` at padded keys.
        A row with no real token keeps every key (its outputs are meaningless, but finite).
        """
        keys = None
        if attention_mask is not None:
            keys = attention_mask | ~attention_mask.any(dim=1, keepdim=True)  # [B, T]
            keys = keys[:, None, None, :]  # [B, 1, 1, T]
        if self.config.pos != "alibi":
            return keys
        pos = torch.arange(T, device=device)
        distance = (pos[None, :] - pos[:, None]).abs().to(torch.float32)  # [T, T]
        bias = -self.alibi_slopes[:, None, None] * distance[None]  # [H, T, T]
        bias = bias[None]  # [1, H, T, T]
        if keys is not None:
            bias = bias.masked_fill(~keys, float("-inf"))  # [B, H, T, T]
        return bias.to(dtype)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``[B, T, D]`` (after the final norm; post-norm: the last block's) for ``idx`` ``[B, T]``.

        Args:
            idx: ``[B, T]`` integer token ids, right-padded.
            attention_mask: optional ``[B, T]`` bool, True at real tokens; None = no padding.
            token_type_ids: optional ``[B, T]`` integer segment ids in ``[0, n_segments)``; None = all 0.

        Raises:
            ValueError: a tensor of the wrong rank, dtype or shape, T > ``block_size``, or
                ``token_type_ids`` given to an encoder built with ``n_segments=0``.
        """
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"idx must be a [B, T] integer tensor, got {tuple(idx.shape)} {idx.dtype}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        if attention_mask is not None and (
            attention_mask.dtype != torch.bool or attention_mask.shape != idx.shape
        ):
            raise ValueError(
                f"attention_mask must be a bool tensor shaped like idx {tuple(idx.shape)}, "
                f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        if token_type_ids is not None:
            if self.seg_emb is None:
                raise ValueError("token_type_ids given but the encoder was built with n_segments=0")
            if token_type_ids.shape != idx.shape or token_type_ids.dtype not in (torch.long, torch.int32):
                raise ValueError(
                    f"token_type_ids must be an integer tensor shaped like idx {tuple(idx.shape)}, "
                    f"got {token_type_ids.dtype} {tuple(token_type_ids.shape)}"
                )
        x = self.tok_emb(idx)  # [B, T, D]
        if self.seg_emb is not None:
            if token_type_ids is None:
                x = x + self.seg_emb.weight[0]  # [D] broadcast: every token in segment 0
            else:
                x = x + self.seg_emb(token_type_ids)  # [B, T, D]
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))  # [T, D] broadcast
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_table[:T].to(x.dtype)  # [T, D] broadcast
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        rope = None
        if self.config.pos == "rope":
            rope = (self.rope_cos[:T], self.rope_sin[:T])  # [T, Q/2] each
        attn_mask = self._attention_mask(attention_mask, T, x.dtype, x.device)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, attn_mask, False, None, layer)
        return self.norm(x)  # [B, T, D]

    def num_params(self, non_embedding: bool = True) -> int:
        """Distinct parameters; ``non_embedding`` leaves out token, segment and position embeddings."""
        return count_params(self, non_embedding=non_embedding)
