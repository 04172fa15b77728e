"""Train, save and load the byte-level BPE tokenizer, and measure how many bytes each token covers.

The tokenizer is byte-level BPE (GPT-2 style; Sennrich et al. 2016, "Neural Machine Translation of
Rare Words with Subword Units") built with Hugging Face ``tokenizers``:

- no normaliser, so ``decode(encode(text)) == text`` for any text without special-token strings;
- ``ByteLevel`` pre-tokeniser (GPT-2 split regex, no prefix space) and ``ByteLevel`` decoder;
- the initial alphabet is all 256 byte symbols, so no input is ever unknown;
- ``SPECIAL_TOKENS`` take ids 0, 1, 2, and are matched whole wherever their text appears.

It is stored only as ``tokenizer.json`` (the ``tokenizers`` format); nothing is pickled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.errors import InputError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]
TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to the printable character that stands for it.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards. These 256
    characters are ``pre_tokenizers.ByteLevel.alphabet()``.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: training documents (streamed once).
        vocab_size: target size including the 256 byte symbols and ``SPECIAL_TOKENS``; the result is
            smaller when the texts support fewer merges.
        min_frequency: a pair must occur at least this often to be merged.

    Raises:
        ValueError: ``vocab_size`` < 259 (bytes + special tokens) or ``min_frequency`` < 1.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    logger.info("trained byte-level BPE: %d tokens (asked for %d)", tok.get_vocab_size(), vocab_size)
    return tok


def tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/tokenizer.json`` when ``path`` is a directory."""
    path = Path(path)
    return path / TOKENIZER_FILE if path.is_dir() else path


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write ``tok`` as JSON to ``path`` (a file, or a directory → ``path/tokenizer.json``), atomically.

    Returns:
        the file written.
    """
    target = tokenizer_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, target)
    return target


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by ``save_tokenizer`` (``path`` is the file or its directory).

    Raises:
        InputError: the file is missing, does not parse, or lacks one of ``SPECIAL_TOKENS``.
    """
    target = tokenizer_file(path)
    if not target.is_file():
        raise InputError(
            f"{target}: no such tokenizer file; expected {TOKENIZER_FILE} written by the tokenizer stage"
        )
    try:
        tok = Tokenizer.from_file(str(target))
    except Exception as exc:  # tokenizers raises plain Exception on malformed JSON
        raise InputError(f"{target}: not a valid tokenizers JSON file ({exc})") from exc
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise InputError(
            f"{target}: lacks special token(s) {missing}; lmforge tokenizers have {SPECIAL_TOKENS}"
        )
    return tok


def special_id(tok: Tokenizer, name: str) -> int:
    """Id of a special token, named in full (``"<|bos|>"``) or short (``"bos"``).

    Raises:
        ValueError: ``name`` is not one of ``SPECIAL_TOKENS``.
        InputError: the tokenizer lacks it.
    """
    token = name if name in SPECIAL_TOKENS else f"<|{name}|>"
    if token not in SPECIAL_TOKENS:
        raise ValueError(f"unknown special token {name!r}; valid: {SPECIAL_TOKENS}")
    token_id = tok.token_to_id(token)
    if token_id is None:
        raise InputError(f"tokenizer lacks special token {token}; lmforge tokenizers have {SPECIAL_TOKENS}")
    return token_id


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """Number of raw UTF-8 bytes each token id stands for, as int32 of shape [vocab_size].

    Special (added) tokens count 0, so summing over a document's ids gives ``len(text.encode())``
    (for text without special-token strings); dividing total loss in bits by that sum gives bits per
    byte.

    Raises:
        InputError: a vocabulary entry is not made of byte-level symbols (not a byte-level tokenizer).
    """
    alphabet = set(byte_to_unicode().values())
    lengths = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int32)
    added = set(tok.get_added_tokens_decoder())
    for token, token_id in tok.get_vocab(with_added_tokens=True).items():
        if token_id in added:
            continue
        if not set(token) <= alphabet:
            raise InputError(
                f"token {token!r} (id {token_id}) is not byte-level; token_byte_lengths needs a byte-level BPE"
            )
        lengths[token_id] = len(token)  # one alphabet character per byte
    return lengths
