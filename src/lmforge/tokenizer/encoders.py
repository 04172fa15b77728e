"""Encode documents to ids fast: ``tokenizers`` batch encoding, or tiktoken built from the same BPE.

Sharding the corpus is dominated by encoding. Two backends produce the ids of a document batch:

- ``tokenizers`` — ``Tokenizer.encode_batch_fast`` (no offsets), any kind;
- ``tiktoken`` — a ``tiktoken.Encoding`` built from a byte-level BPE's own vocabulary and split
  regex: ranks are the token ids, and since BPE training gives every merge a fresh id in merge order,
  "merge the adjacent pair of lowest rank" replays the same merges. tiktoken's Rust BPE is several
  times faster per core (bench/tokenizer_bench.py measures it).

The two can in principle differ where a token is reachable by a pair the merge list never recorded,
or where the regex engines (Oniguruma vs fancy-regex) disagree on a Unicode class, so ``auto``
checks them against each other on a sample and uses tiktoken only when they agree on every document
(and tiktoken is installed). Both backends treat special-token text in documents as plain text.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tokenizers import Tokenizer

from lmforge.tokenizer.train import PRE_TOKENIZER_PATTERNS, byte_to_unicode, special_ids

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "tokenizers", "tiktoken")


def tiktoken_pattern(tok: Tokenizer) -> str:
    """The split regex of a byte-level BPE, as tiktoken needs it.

    Raises:
        ValueError: ``tok`` is not a byte-level BPE tiktoken can reproduce (names what differs).
    """
    spec = json.loads(tok.to_str())
    model, pre, dec = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or dec.get("type") != "ByteLevel":
        raise ValueError(f"not a byte-level BPE (model {model.get('type')}, decoder {dec.get('type')})")
    if spec.get("normalizer") is not None:
        raise ValueError("has a normaliser; tiktoken applies none")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"BPE option {key}={model[key]!r} has no tiktoken equivalent")
    if model.get("ignore_merges") or model.get("byte_fallback"):
        raise ValueError("BPE ignore_merges/byte_fallback have no tiktoken equivalent")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex") and not pre.get("add_prefix_space"):
        return PRE_TOKENIZER_PATTERNS["gpt2"]
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and "Regex" in steps[0].get("pattern", {})
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex")
        and not steps[1].get("add_prefix_space")
    ):
        return steps[0]["pattern"]["Regex"]
    raise ValueError(f"pre-tokeniser {pre.get('type')} is not a regex split + byte-level mapping")


def tiktoken_encoding(tok: Tokenizer) -> Any:
    """A ``tiktoken.Encoding`` that encodes like the byte-level BPE ``tok``.

    Raises:
        ImportError: tiktoken is not installed.
        ValueError: ``tok`` cannot be reproduced (see ``tiktoken_pattern``), or its ids are not in
            merge order.
    """
    import tiktoken

    pattern = tiktoken_pattern(tok)
    spec = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = spec["vocab"]
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    try:
        ranks = {bytes(to_byte[ch] for ch in token): i for token, i in vocab.items()}
    except KeyError as exc:
        raise ValueError(f"vocabulary entry with non-byte-level symbol {exc}") from None
    merged = [vocab["".join(m) if isinstance(m, list) else m.replace(" ", "", 1)] for m in spec["merges"]]
    if any(b <= a for a, b in zip(merged, merged[1:])):
        raise ValueError("merge results are not numbered in merge order; tiktoken ranks would differ")
    if len(ranks) != len(vocab) or any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError("vocabulary lacks some of the 256 byte symbols")
    return tiktoken.Encoding(
        name="lmforge-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_ids(tok)
    )


class DocEncoder:
    """Callable: a list of documents → their ids (special-token text in them encoded as plain text).

    tiktoken encodes in the calling thread and releases the GIL while it runs, so several threads
    can share one ``DocEncoder``; ``tokenizers`` uses its own thread pool (single-threaded when
    ``TOKENIZERS_PARALLELISM=false``). Sharing one ``tokenizers`` encoder across threads is not safe:
    it toggles ``encode_special_tokens`` around each call.

    Args:
        tok: the tokenizer.
        backend: ``tokenizers`` or ``tiktoken`` (resolve ``auto`` first with ``choose_backend``).
    """

    def __init__(self, tok: Tokenizer, backend: str):
        if backend not in ("tokenizers", "tiktoken"):
            raise ValueError(f"backend must be tokenizers or tiktoken, got {backend!r}")
        self.tok, self.backend = tok, backend
        self._tiktoken = tiktoken_encoding(tok) if backend == "tiktoken" else None

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self._tiktoken is not None:
            encode = self._tiktoken.encode_ordinary
            return [encode(t) for t in texts]
        was = self.tok.encode_special_tokens
        self.tok.encode_special_tokens = True  # document text is data, never control tokens
        try:
            encodings = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        finally:
            self.tok.encode_special_tokens = was
        return [e.ids for e in encodings]


def choose_backend(tok: Tokenizer, backend: str, sample: list[str]) -> str:
    """Resolve ``backend`` to ``tokenizers`` or ``tiktoken``.

    ``auto`` picks tiktoken when it is installed, can reproduce ``tok``, and gives the same ids as
    ``tokenizers`` on every document of ``sample``; otherwise ``tokenizers`` (logging why).

    Raises:
        ValueError: an unknown backend, or ``tiktoken`` requested for a tokenizer it cannot reproduce.
        ImportError: ``tiktoken`` requested but not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        if backend == "tiktoken":
            tiktoken_encoding(tok)  # raise now, in the caller's process, if it cannot work
        return backend
    try:
        fast = DocEncoder(tok, "tiktoken")
    except (ImportError, ValueError) as exc:
        logger.debug("encode backend: tokenizers (tiktoken unusable: %s)", exc)
        return "tokenizers"
    reference = DocEncoder(tok, "tokenizers")(sample)
    if fast(sample) != reference:
        logger.warning("tiktoken and tokenizers disagree on the sample; encoding with tokenizers")
        return "tokenizers"
    logger.debug("encode backend: tiktoken (agrees with tokenizers on %d documents)", len(sample))
    return "tiktoken"
