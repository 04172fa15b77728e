"""Measure tokenizers on held-out text: the word-versus-subword comparison, in numbers.

For each tokenizer, on the same held-out documents (special-token text encoded as plain text):

- ``bytes_per_token`` — UTF-8 bytes per token (compression; higher means shorter sequences);
- ``unk_rate`` — share of tokens that are ``[UNK]`` (0 by construction for byte-level BPE);
- ``oov_rate`` — share of whitespace-separated words with at least one ``[UNK]`` in them (for the
  word-level baseline, its out-of-vocabulary rate);
- ``vocab_used`` — share of the non-special vocabulary that occurs at least once;
- ``lossless_docs`` — share of documents with ``decode(encode(text)) == text``;
- ``encode_mb_per_s`` — ``encode_batch_fast`` throughput in this process (tokenizers' own threads).
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Sequence

from tokenizers import Tokenizer

from lmforge.tokenizer.train import special_ids, unk_id

METRICS = (
    "vocab_size",
    "bytes_per_token",
    "unk_rate",
    "oov_rate",
    "vocab_used",
    "lossless_docs",
    "encode_mb_per_s",
    "train_time_s",
)
_WORD = re.compile(r"\S+")


def _time_encode(tok: Tokenizer, texts: list[str], min_seconds: float = 0.2, max_reps: int = 5) -> float:
    """Seconds for one ``encode_batch_fast`` over ``texts``: the fastest of repeated runs."""
    best, spent, reps = float("inf"), 0.0, 0
    while reps < max_reps and (reps == 0 or spent < min_seconds):
        start = time.perf_counter()
        tok.encode_batch_fast(texts, add_special_tokens=False)
        elapsed = time.perf_counter() - start
        best, spent, reps = min(best, elapsed), spent + elapsed, reps + 1
    return best


def _oov_words(text: str, unk_starts: list[int]) -> int:
    """Number of whitespace-separated words of ``text`` containing one of the character offsets."""
    if not unk_starts:
        return 0
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts = [s for s, _ in spans]
    hit = set()
    for offset in unk_starts:
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0 and offset < spans[i][1]:
            hit.add(i)
    return len(hit)


def evaluate_tokenizer(tok: Tokenizer, texts: Sequence[str]) -> dict[str, float]:
    """The metrics of the module docstring for ``tok`` on ``texts`` (all but ``train_time_s``).

    Raises:
        ValueError: ``texts`` holds no text.
    """
    texts = list(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if not n_bytes:
        raise ValueError("evaluate_tokenizer needs non-empty held-out texts")
    was = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        seconds = _time_encode(tok, texts)
        encodings = tok.encode_batch(texts, add_special_tokens=False)
    finally:
        tok.encode_special_tokens = was
    unk = unk_id(tok)
    n_tokens = n_unk = n_words = n_oov = lossless = 0
    seen: set[int] = set()
    decoded = tok.decode_batch([e.ids for e in encodings], skip_special_tokens=True)
    for text, encoding, back in zip(texts, encodings, decoded):
        ids = encoding.ids
        n_tokens += len(ids)
        seen.update(ids)
        lossless += back == text
        n_words += sum(1 for _ in _WORD.finditer(text))
        if unk is not None:
            unk_starts = [off[0] for i, off in zip(ids, encoding.offsets) if i == unk]
            n_unk += len(unk_starts)
            n_oov += _oov_words(text, unk_starts)
    specials = set(special_ids(tok).values())
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return {
        "vocab_size": vocab,
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "unk_rate": n_unk / max(n_tokens, 1),
        "oov_rate": n_oov / max(n_words, 1),
        "vocab_used": len(seen - specials) / max(vocab - len(specials), 1),
        "lossless_docs": lossless / len(texts),
        "encode_mb_per_s": n_bytes / 1e6 / max(seconds, 1e-9),
    }


def comparison_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per tokenizer kind, one column per metric in ``METRICS`` it has."""
    columns = [m for m in METRICS if any(m in r for r in results.values())]
    lines = ["| kind | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kind, metrics in results.items():
        cells = [_fmt(metrics.get(m)) for m in columns]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
