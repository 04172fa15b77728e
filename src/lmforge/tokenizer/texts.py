"""Plain texts as model input, for sequence classification, embeddings and reward scoring.

- ``encode_texts``: token ids per text framed for the architecture: decoders read
  ``<|bos|> text <|eos|>`` (the last token, ``<|eos|>``, is the pooled one); encoders read
  ``[CLS] text [SEP]``; cut to the model's length with the end marker kept. ``encode_as_text`` encodes
  without framing, special-token strings in the text kept as text; ``frame_markers`` names the ids.
- ``pad_batch``: right padding to the longest sequence; the attention mask is True at real tokens.

Used by fine-tuning (``training/``), the API server's embeddings endpoint and evaluation, so it sits in
the tokenizer layer rather than in ``training``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Tokenizer

from lmforge.tokenizer.train import special_id


def frame_markers(tok: Tokenizer, arch: str) -> tuple[int, int]:
    """The ids a text is framed by for ``arch``: ``[CLS] ... [SEP]`` (encoder) or ``<|bos|> ... <|eos|>``."""
    if arch == "encoder":
        return special_id(tok, "cls"), special_id(tok, "sep")
    return special_id(tok, "bos"), special_id(tok, "eos")


def encode_as_text(tok: Tokenizer, texts: Sequence[str]) -> list[Any]:
    """``tok.encode_batch`` without special tokens, special-token strings in the texts kept as text.

    ``tok`` is only written when its ``encode_special_tokens`` is off, so a tokenizer kept with it on can be
    shared by threads (the API server's: setting it while another thread encodes fails)."""
    was = tok.encode_special_tokens
    if not was:
        tok.encode_special_tokens = True  # text is data: special-token strings in it stay text
    try:
        return tok.encode_batch(list(texts), add_special_tokens=False)
    finally:
        if not was:
            tok.encode_special_tokens = False


def encode_texts(tok: Tokenizer, texts: Sequence[str], arch: str, block_size: int) -> list[list[int]]:
    """Token ids per text framed for ``arch`` (module docstring), cut to ``block_size`` tokens.

    The end marker is kept when a text is cut, so the pooled position always means "end of text".
    """
    start, end = frame_markers(tok, arch)
    return [[start, *e.ids[: block_size - 2], end] for e in encode_as_text(tok, texts)]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx [B, T], attention_mask [B, T] bool)``: right-padded to the longest sequence."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return idx, mask
