"""Train, save and load tokenizers of four kinds, and measure how many bytes each token covers.

Every kind is built with Hugging Face ``tokenizers`` and stored only as ``tokenizer.json`` (that
library's format; ``tokenizers.Tokenizer.from_file`` loads it) plus ``tokenizer_meta.json`` (ours:
kind, vocabulary size, special tokens, format version, training sample). Nothing is pickled.

Kinds (``KINDS``):

- ``bpe`` (default) — byte-level BPE, GPT-2 style (Sennrich et al. 2016, "Neural Machine Translation
  of Rare Words with Subword Units"; byte-level alphabet: Radford et al. 2019). No normaliser,
  ``ByteLevel`` pre-tokeniser and decoder, all 256 byte symbols in the initial alphabet: no input is
  ever unknown and ``decode(encode(text)) == text`` for any text without special-token strings.
- ``wordpiece`` — WordPiece (Schuster & Nakajima 2012, "Japanese and Korean Voice Search"; Wu et al.
  2016, "Google's Neural Machine Translation System"), BERT pre-tokenisation (split on whitespace and
  punctuation, so whitespace is lost), ``##`` continuation prefix, ``[UNK]`` for characters outside
  the learned alphabet. Unlike BERT there is no lower-casing or accent stripping.
- ``unigram`` — Unigram language model (Kudo 2018, "Subword Regularization"), SentencePiece-style
  ``▁`` metaspace for whitespace, ``[UNK]`` for unseen characters (no byte fallback).
- ``word`` — the word-level baseline: one id per whole word or punctuation run seen in training,
  ``[UNK]`` for every other word (the out-of-vocabulary problem subword kinds exist to solve).

Special tokens (``special_tokens_for``): ``<|bos|>`` = 0, ``<|eos|>`` = 1, ``<|pad|>`` = 2 for every
kind (checkpoints rely on it), then the configurable extras — by default the chat role tokens
(``CHAT_TOKENS``) and the encoder tokens (``ENCODER_TOKENS``) — then ``[UNK]`` for the kinds that
need one. Special tokens are matched whole wherever their text appears in ``encode``; code that
encodes *data* turns that off (``tok.encode_special_tokens = True``) so text cannot inject them.

Training is deterministic for ``bpe`` and ``word``; ``tokenizers``' WordPiece and Unigram trainers
are not bit-reproducible between runs (ties and parallel sums), though a saved tokenizer reloads
exactly.

The pre-tokeniser regex is configurable (``TokenizerSpec.pre_tokenizer``): empty for the kind's
own, a preset name from ``PRE_TOKENIZER_PATTERNS`` or a regex, applied as an isolating split before
the kind's own step (byte mapping for BPE, ``▁`` for Unigram). Departure: for WordPiece and word
with a regex, whitespace is kept in the pieces and the decoder concatenates instead of inserting
spaces.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.errors import InputError
from lmforge.runstore import TOKENIZER_FILE

logger = logging.getLogger(__name__)

KINDS = ("bpe", "wordpiece", "unigram", "word")
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]  # ids 0, 1, 2 in every lmforge tokenizer
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
ENCODER_TOKENS = ["[MASK]", "[CLS]", "[SEP]"]
UNK_TOKEN = "[UNK]"
DEFAULT_EXTRA_TOKENS = (*CHAT_TOKENS, *ENCODER_TOKENS)
META_FILE = "tokenizer_meta.json"
META_FORMAT = 1

# GPT-2's split (what ``ByteLevel(use_regex=True)`` applies) and GPT-4's (cl100k, without possessives).
PRE_TOKENIZER_PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
_MODEL_KIND = {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram", "WordLevel": "word"}


def special_tokens_for(kind: str, extra: Iterable[str] = DEFAULT_EXTRA_TOKENS) -> list[str]:
    """The special tokens of a ``kind`` tokenizer, in id order: bos, eos, pad, ``extra``, [UNK] if needed."""
    return [*SPECIAL_TOKENS, *extra, *([UNK_TOKEN] if kind != "bpe" else [])]


def resolve_pattern(pre_tokenizer: str) -> str:
    """A preset name → its regex; a regex → itself (checked to compile); "" → "" (the kind's own).

    Raises:
        ValueError: the regex does not compile (Oniguruma syntax, as ``tokenizers`` uses).
    """
    pattern = PRE_TOKENIZER_PATTERNS.get(pre_tokenizer, pre_tokenizer)
    if pattern:
        try:
            Regex(pattern)
        except Exception as exc:  # tokenizers raises plain Exception
            raise ValueError(
                f"pre_tokenizer {pre_tokenizer!r} is not a valid regex ({exc}); "
                f"use a preset ({', '.join(PRE_TOKENIZER_PATTERNS)}) or fix the pattern"
            ) from None
    return pattern


@dataclass(frozen=True)
class TokenizerSpec:
    """What to train.

    Attributes:
        kind: one of ``KINDS``.
        vocab_size: target size including special tokens; the result is smaller when the text
            supports fewer entries.
        min_frequency: a pair (BPE, WordPiece) or word (word) must occur this often; Unigram ignores it.
        extra_special_tokens: special tokens after bos/eos/pad (chat roles and encoder tokens by default).
        pre_tokenizer: "" for the kind's own, a ``PRE_TOKENIZER_PATTERNS`` name, or a regex.
    """

    kind: str = "bpe"
    vocab_size: int = 4096
    min_frequency: int = 2
    extra_special_tokens: tuple[str, ...] = DEFAULT_EXTRA_TOKENS
    pre_tokenizer: str = ""

    @property
    def special_tokens(self) -> list[str]:
        return special_tokens_for(self.kind, self.extra_special_tokens)

    @property
    def min_vocab_size(self) -> int:
        """Special tokens plus the 256 bytes (BPE) or at least one learned entry (other kinds)."""
        return len(self.special_tokens) + (256 if self.kind == "bpe" else 1)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for an impossible spec."""
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        specials = self.special_tokens
        bad = [t for t in self.extra_special_tokens if not t or t in SPECIAL_TOKENS or t == UNK_TOKEN]
        if bad or len(set(specials)) != len(specials):
            raise ValueError(
                f"extra_special_tokens must be distinct, non-empty and not {SPECIAL_TOKENS + [UNK_TOKEN]} "
                f"(those are added automatically), got {list(self.extra_special_tokens)}"
            )
        if self.vocab_size < self.min_vocab_size:
            raise ValueError(
                f"vocab_size must be >= {self.min_vocab_size} for kind {self.kind} "
                f"({len(specials)} special tokens{' + 256 bytes' if self.kind == 'bpe' else ' + 1'}), "
                f"got {self.vocab_size}"
            )
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {self.min_frequency}")
        resolve_pattern(self.pre_tokenizer)


class TextSample:
    """Iterate over ``texts`` until ``max_bytes`` UTF-8 bytes have been yielded (0 = all), counting.

    After iteration ``bytes`` and ``docs`` tell how much text was used (the training sample size).
    """

    def __init__(self, texts: Iterable[str], max_bytes: int = 0):
        self.texts, self.max_bytes = texts, max_bytes
        self.bytes = self.docs = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            yield text
            self.bytes += len(text.encode("utf-8"))
            self.docs += 1
            if self.max_bytes and self.bytes >= self.max_bytes:
                return


def _build(spec: TokenizerSpec) -> tuple[Tokenizer, Any]:
    """An untrained tokenizer of ``spec.kind`` with its pre-tokeniser and decoder, and its trainer."""
    pattern = resolve_pattern(spec.pre_tokenizer)
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated") if pattern else None
    specials = spec.special_tokens
    if spec.kind == "bpe":
        tok = Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level]) if split else byte_level
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif spec.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN))
        tok.pre_tokenizer = split or pre_tokenizers.BertPreTokenizer()
        tok.decoder = (
            decoders.Sequence([decoders.Replace(Regex("^##"), ""), decoders.Fuse()])
            if split
            else decoders.WordPiece(prefix="##", cleanup=True)
        )
        trainer = trainers.WordPieceTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=specials,
            continuing_subword_prefix="##",
            show_progress=False,
        )
    elif spec.kind == "unigram":
        tok = Tokenizer(models.Unigram())
        if split:
            meta = pre_tokenizers.Metaspace(prepend_scheme="never", split=False)
            tok.pre_tokenizer = pre_tokenizers.Sequence([split, meta])
            tok.decoder = decoders.Metaspace(prepend_scheme="never", split=False)
        else:
            tok.pre_tokenizer = pre_tokenizers.Metaspace()
            tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=spec.vocab_size, special_tokens=specials, unk_token=UNK_TOKEN, show_progress=False
        )
    else:  # word
        tok = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        tok.pre_tokenizer = split or pre_tokenizers.Whitespace()
        if split:
            tok.decoder = (
                decoders.Fuse()
            )  # pieces keep their whitespace; without a regex, words join with " "
        trainer = trainers.WordLevelTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    return tok, trainer


def train_tokenizer(texts: Iterable[str], spec: TokenizerSpec) -> Tokenizer:
    """Train a tokenizer of ``spec.kind`` on ``texts`` (streamed once).

    Raises:
        ValueError: an invalid spec (see ``TokenizerSpec.validate``).
    """
    spec.validate()
    tok, trainer = _build(spec)
    tok.train_from_iterator(texts, trainer=trainer)
    wrong = [t for i, t in enumerate(spec.special_tokens) if tok.token_to_id(t) != i]
    if wrong:  # the trainers put special tokens first; check rather than trust
        raise RuntimeError(f"special tokens {wrong} did not get their ids 0..{len(spec.special_tokens) - 1}")
    logger.info(
        "trained %s tokenizer: %d tokens (asked for %d)", spec.kind, tok.get_vocab_size(), spec.vocab_size
    )
    return tok


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    *,
    extra_special_tokens: Iterable[str] = DEFAULT_EXTRA_TOKENS,
    pre_tokenizer: str = "",
) -> Tokenizer:
    """Train a byte-level BPE tokenizer (``train_tokenizer`` with kind ``bpe``).

    Raises:
        ValueError: ``vocab_size`` below 256 bytes + special tokens, or ``min_frequency`` < 1.
    """
    spec = TokenizerSpec("bpe", vocab_size, min_frequency, tuple(extra_special_tokens), pre_tokenizer)
    return train_tokenizer(texts, spec)


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


# --------------------------------------------------------------------------------------------------
# files


def tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/tokenizer.json`` when ``path`` is a directory."""
    path = Path(path)
    return path / TOKENIZER_FILE if path.is_dir() else path


def meta_file(path: str | os.PathLike) -> Path:
    """The metadata file beside a tokenizer file: ``tokenizer.json`` → ``tokenizer_meta.json``."""
    target = tokenizer_file(path)
    return target.with_name(f"{target.stem}_meta.json")


def _write_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> Path:
    """Write ``tok`` as JSON to ``path`` (a file, or a directory → ``path/tokenizer.json``), atomically.

    Beside it, ``tokenizer_meta.json`` records ``describe_tokenizer(tok)``, the format version and
    ``meta`` (e.g. ``{"spec": ..., "training_sample_bytes": N}``).

    Returns:
        the tokenizer file written.
    """
    target = tokenizer_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, tok.to_str())
    record = {"format": META_FORMAT, **describe_tokenizer(tok), **(meta or {})}
    _write_atomic(meta_file(target), json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
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


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a saved tokenizer: its ``tokenizer_meta.json``, or (for a lone ``tokenizer.json``,
    e.g. in a checkpoint) what ``describe_tokenizer`` derives from the tokenizer itself.

    Raises:
        InputError: the metadata file is malformed or of another format version.
    """
    file = meta_file(path)
    if not file.is_file():
        return {"format": META_FORMAT, **describe_tokenizer(load_tokenizer(path))}
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: unreadable tokenizer metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{file}: metadata format {found!r}; this lmforge reads format {META_FORMAT}")
    return meta


def spec_meta(spec: TokenizerSpec, sample: TextSample | None = None) -> dict[str, Any]:
    """Metadata recording how a tokenizer was trained (for ``save_tokenizer(meta=...)``)."""
    out: dict[str, Any] = {"spec": {**asdict(spec), "extra_special_tokens": list(spec.extra_special_tokens)}}
    if sample is not None:
        out.update(training_sample_bytes=sample.bytes, training_sample_docs=sample.docs)
    return out


# --------------------------------------------------------------------------------------------------
# inspecting a tokenizer


def tokenizer_kind(tok: Tokenizer) -> str:
    """``bpe``, ``wordpiece``, ``unigram`` or ``word``, from the tokenizer's model type.

    Raises:
        InputError: a model type lmforge does not build.
    """
    name = type(tok.model).__name__
    if name not in _MODEL_KIND:
        raise InputError(f"tokenizer model {name!r} is not one of {', '.join(_MODEL_KIND)}")
    return _MODEL_KIND[name]


def unk_id(tok: Tokenizer) -> int | None:
    """Id of ``[UNK]``, or None for a tokenizer that cannot produce unknown tokens (byte-level BPE)."""
    return tok.token_to_id(UNK_TOKEN) if tokenizer_kind(tok) != "bpe" else None


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """Every special (added) token of ``tok`` → its id, in id order."""
    added = tok.get_added_tokens_decoder()
    return {added[i].content: i for i in sorted(added) if added[i].special}


def describe_tokenizer(tok: Tokenizer) -> dict[str, Any]:
    """Kind, vocabulary size, special tokens and unknown token of ``tok`` (the derivable metadata)."""
    return {
        "kind": tokenizer_kind(tok),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "special_tokens": special_ids(tok),
        "unk_token": UNK_TOKEN if unk_id(tok) is not None else None,
    }


def _short_names() -> dict[str, str]:
    names = {t[2:-2]: t for t in SPECIAL_TOKENS + CHAT_TOKENS}
    names.update({t[1:-1].lower(): t for t in [*ENCODER_TOKENS, UNK_TOKEN]})
    return names


def special_id(tok: Tokenizer, name: str) -> int:
    """Id of a special token, named in full (``"<|bos|>"``, ``"[MASK]"``) or short (``"bos"``, ``"mask"``).

    Raises:
        ValueError: ``name`` is neither a known special token nor one of ``tok``'s special tokens.
        InputError: the tokenizer lacks it (e.g. chat tokens in a tokenizer trained before they existed).
    """
    token = _short_names().get(name, name)
    known = {*SPECIAL_TOKENS, *CHAT_TOKENS, *ENCODER_TOKENS, UNK_TOKEN, *special_ids(tok)}
    if token not in known:
        raise ValueError(
            f"unknown special token {name!r}; valid: {sorted(known)} or short names {sorted(_short_names())}"
        )
    token_id = tok.token_to_id(token)
    if token_id is None:
        raise InputError(f"tokenizer lacks special token {token}; it has {list(special_ids(tok))}")
    return token_id


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """Number of UTF-8 bytes of text each token id stands for, as int32 of shape [vocab_size].

    Special (added) tokens, ``[UNK]`` included, count 0. For byte-level BPE the count is exact:
    summing over a document's ids gives ``len(text.encode())`` (for text without special-token
    strings), so total loss in bits divided by that sum is bits per byte. The other kinds drop
    whitespace (WordPiece, word) or unknown characters, so for them it is an estimate: a ``▁`` counts
    as one space byte, and a word-initial piece counts one extra byte for the whitespace before it
    when the pre-tokeniser drops whitespace. The exact byte count of every token shard is in its
    ``index.json``.

    Raises:
        InputError: a BPE vocabulary entry is not made of byte-level symbols.
    """
    kind = tokenizer_kind(tok)
    lengths = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int32)
    added = set(tok.get_added_tokens_decoder())
    alphabet = set(byte_to_unicode().values())
    drops_space = type(tok.pre_tokenizer).__name__ in ("BertPreTokenizer", "Whitespace")
    for token, token_id in tok.get_vocab(with_added_tokens=True).items():
        if token_id in added:
            continue
        if kind == "bpe":
            if not set(token) <= alphabet:
                raise InputError(
                    f"token {token!r} (id {token_id}) is not byte-level; this BPE is not byte-level"
                )
            lengths[token_id] = len(token)  # one alphabet character per byte
        elif kind == "unigram":
            lengths[token_id] = len(token.replace("▁", " ").encode("utf-8"))
        else:
            continuing = kind == "wordpiece" and token.startswith("##")
            piece = token[2:] if continuing else token
            initial = not continuing and drops_space and token[:1].isalnum()
            lengths[token_id] = len(piece.encode("utf-8")) + int(initial)
    return lengths
