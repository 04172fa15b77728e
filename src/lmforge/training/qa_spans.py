"""Extractive question answering: questions and passages as model windows, the span loss, the span search.

BERT's SQuAD recipe (Devlin et al. 2019, §4.2) with the windows of Hugging Face's ``run_qa.py``:

- ``featurize``: the question and the context are encoded separately, without special tokens
  (``tokenizer.texts.encode_as_text``), so any lmforge tokenizer and BERT's own WordPiece both work; the
  context's token offsets are characters of the original context (a lower-casing normaliser included).
  A question keeps its first ``question_limit(max_len)`` = min(64, max_len // 4) tokens (BERT's
  ``max_query_length`` is 64). The context is cut into chunks of ``L = max_len - 3 - len(question)``
  tokens, consecutive chunks overlapping by ``doc_stride`` tokens (each starts ``L - doc_stride`` after
  the previous; the last reaches the end of the context), and each chunk becomes one window
  ``[CLS] question [SEP] chunk [SEP]`` with ``token_type_ids`` 0 up to the first ``[SEP]`` and 1 after.
- Gold positions: the answer's first token is the first context token that ends after the answer's
  first character, its last token the last context token that starts before the answer's end. A
  window holding both points at them; every other window points both at position 0, ``[CLS]`` ("the
  answer is not here").
- ``span_loss``: the mean of the cross-entropies of the gold start and the gold end, per window.
  *Departure*: padded positions are masked out of both softmaxes (BERT's batches have fixed length and
  let the pads take probability mass), so a window's loss does not depend on what it is batched with.
- ``best_span`` / ``decode``: in each window, the pair ``s <= e`` of context positions with
  ``e - s + 1 <= max_answer_tokens`` maximising ``start[s] + end[e]``; an example's answer is its best
  window's pair (the raw logit sums are compared across windows, as in ``run_qa``). ``[CLS]``, the
  question and the separators are never an answer. *Departure*: every pair is scored (``run_qa``
  considers only the 20 best starts × 20 best ends, which can miss the best valid pair). The answer
  text is ``context[offsets[s].start : offsets[e].end]`` without surrounding whitespace (byte-level
  BPE tokens carry their leading space): always a slice of the original context.

Shape notation: B windows in a batch, T tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lmforge.tokenizer.texts import encode_as_text, pad_batch
from lmforge.tokenizer.train import special_id

MAX_QUESTION_TOKENS = 64  # BERT's max_query_length
FRAME_TOKENS = 3  # [CLS] question [SEP] chunk [SEP]


@dataclass(frozen=True)
class QAExample:
    """A question about a context; ``answer_start``/``answer_end`` are the gold answer's characters in
    ``context`` (end exclusive), -1 when there is none to train on."""

    question: str
    context: str
    answer_start: int = -1
    answer_end: int = -1


@dataclass(frozen=True)
class Window:
    """One model input of an example (module docstring).

    ``offsets[k]`` is the character span in the context of the token at position
    ``context_start + k``; ``start``/``end`` are the gold positions (0, 0 when the answer is not here).
    """

    example: int
    ids: list[int]
    token_type_ids: list[int]
    context_start: int
    offsets: list[tuple[int, int]]
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Span:
    """A predicted answer: ``context[start:end] == text``; ``score`` is its start + end logit."""

    text: str
    start: int
    end: int
    score: float


def question_limit(max_len: int) -> int:
    """Tokens a question keeps in a window of ``max_len``: min(64, max_len // 4)."""
    return min(MAX_QUESTION_TOKENS, max_len // 4)


def check_windows(max_len: int, doc_stride: int) -> None:
    """Raise ``ValueError`` unless every window, even after the longest question, advances.

    The shortest chunk is ``max_len - 3 - question_limit(max_len)`` tokens; the overlap ``doc_stride``
    must be smaller.
    """
    if max_len < 8:
        raise ValueError(f"max_len must be >= 8, got {max_len}")
    shortest = max_len - FRAME_TOKENS - question_limit(max_len)
    if not 0 <= doc_stride < shortest:
        raise ValueError(
            f"doc_stride must be in [0, {shortest}) for max_len {max_len} (chunks of at least {shortest} "
            f"context tokens after a question of {question_limit(max_len)}), got {doc_stride}"
        )


def featurize(
    tok: Tokenizer, examples: Sequence[QAExample], *, max_len: int, doc_stride: int
) -> list[Window]:
    """The windows of every example, in example order (module docstring).

    Raises:
        ValueError: ``max_len``/``doc_stride`` that cannot make progress (``check_windows``).
        InputError: the tokenizer lacks ``[CLS]`` or ``[SEP]``.
    """
    check_windows(max_len, doc_stride)
    cls, sep = special_id(tok, "cls"), special_id(tok, "sep")
    if tok.truncation is not None or tok.padding is not None:  # e.g. an imported tokenizer.json
        tok = Tokenizer.from_str(tok.to_str())
        tok.no_truncation()
        tok.no_padding()
    contexts = list(dict.fromkeys(e.context for e in examples))  # a paragraph's questions share it
    encoded = dict(zip(contexts, encode_as_text(tok, contexts)))
    questions = encode_as_text(tok, [e.question for e in examples])
    limit = question_limit(max_len)
    windows: list[Window] = []
    for n, (ex, q) in enumerate(zip(examples, questions)):
        ctx = encoded[ex.context]
        q_ids = q.ids[:limit]
        offsets = [tuple(o) for o in ctx.offsets]
        gold = _gold_tokens(offsets, ex.answer_start, ex.answer_end)
        chunk = max_len - FRAME_TOKENS - len(q_ids)
        head = [cls, *q_ids, sep]
        first = 0
        while True:
            last = min(first + chunk, len(offsets))  # one past the chunk's last context token
            start = end = 0
            if gold is not None and first <= gold[0] and gold[1] < last:
                start, end = len(head) + gold[0] - first, len(head) + gold[1] - first
            windows.append(
                Window(
                    example=n,
                    ids=[*head, *ctx.ids[first:last], sep],
                    token_type_ids=[0] * len(head) + [1] * (last - first + 1),
                    context_start=len(head),
                    offsets=offsets[first:last],
                    start=start,
                    end=end,
                )
            )
            if last >= len(offsets):
                break
            first += chunk - doc_stride
    return windows


def _gold_tokens(offsets: list[tuple[int, int]], a: int, b: int) -> tuple[int, int] | None:
    """``(first, last)`` context tokens of the answer characters ``[a, b)``; None when it has none."""
    if a < 0 or b <= a:
        return None
    first = next((k for k, (_, e) in enumerate(offsets) if e > a), None)
    last = next((k for k in range(len(offsets) - 1, -1, -1) if offsets[k][0] < b), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def collate(
    windows: Sequence[Window], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(idx [B, T], attention_mask [B, T], token_type_ids [B, T], start [B], end [B])``, right-padded."""
    idx, mask = pad_batch([w.ids for w in windows], pad_id)
    types = torch.zeros_like(idx)
    for i, w in enumerate(windows):
        types[i, : len(w.token_type_ids)] = torch.tensor(w.token_type_ids)
    start = torch.tensor([w.start for w in windows], dtype=torch.long)
    end = torch.tensor([w.end for w in windows], dtype=torch.long)
    return idx, mask, types, start, end


def span_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Summed over windows, each window's ``(CE(start) + CE(end)) / 2``; logits ``[B, T]``, gold ``[B]``,
    padded positions (``attention_mask`` False) excluded from both softmaxes."""
    pad = ~attention_mask
    s = start_logits.float().masked_fill(pad, -math.inf)
    e = end_logits.float().masked_fill(pad, -math.inf)
    return (F.cross_entropy(s, start, reduction="sum") + F.cross_entropy(e, end, reduction="sum")) / 2


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, window: Window, max_answer_tokens: int
) -> tuple[float, int, int] | None:
    """``(score, s, e)``: the best context positions of one window (module docstring), or None when the
    window holds no context token. Logits ``[T]`` of the window (padding beyond its length is ignored)."""
    n = len(window.offsets)
    if n == 0:
        return None
    c0 = window.context_start
    s = np.asarray(start_logits[c0 : c0 + n], dtype=np.float64)
    e = np.asarray(end_logits[c0 : c0 + n], dtype=np.float64)
    scores = s[:, None] + e[None, :]  # [n, n]: row = start, column = end
    length = np.arange(n)[None, :] - np.arange(n)[:, None]  # e - s
    scores[(length < 0) | (length >= max_answer_tokens)] = -np.inf
    k = int(np.argmax(scores))  # the first maximum: the earliest start, then the shortest span
    i, j = divmod(k, n)
    return float(scores[i, j]), c0 + i, c0 + j


def decode(
    examples: Sequence[QAExample],
    windows: Sequence[Window],
    logits: Sequence[tuple[np.ndarray, np.ndarray]],
    max_answer_tokens: int,
) -> list[Span]:
    """One answer per example: the best span over its windows (ties: the earlier window).

    ``logits[i]`` are the (start, end) logits of ``windows[i]``. An example with no context token gets
    the empty answer with score -inf.

    Raises:
        ValueError: ``max_answer_tokens`` < 1, or windows and logits differ in number.
    """
    if max_answer_tokens < 1:
        raise ValueError(f"max_answer_tokens must be >= 1, got {max_answer_tokens}")
    if len(windows) != len(logits):
        raise ValueError(f"{len(windows)} windows but {len(logits)} logit pairs")
    best: list[tuple[float, Window, int, int] | None] = [None] * len(examples)
    for w, (start, end) in zip(windows, logits):
        found = best_span(start, end, w, max_answer_tokens)
        if found is not None and (best[w.example] is None or found[0] > best[w.example][0]):
            best[w.example] = (found[0], w, found[1], found[2])
    spans = []
    for ex, b in zip(examples, best):
        if b is None:
            spans.append(Span("", 0, 0, -math.inf))
            continue
        score, w, s, e = b
        a, z = w.offsets[s - w.context_start][0], w.offsets[e - w.context_start][1]
        text = ex.context[a:z]
        a += len(text) - len(text.lstrip())
        z -= len(text) - len(text.rstrip())
        spans.append(Span(ex.context[a:z] if z > a else "", a, max(a, z), score))
    return spans


@torch.no_grad()
def window_logits(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    windows: Sequence[Window],
    pad_id: int,
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """``(start and end logits per window, mean span_loss per window)``.

    ``forward(idx, attention_mask, token_type_ids)`` returns ``(start [B, T], end [B, T])`` (the caller
    sets eval mode). Windows are batched by length; the output keeps their order, each window's logits
    cut to its own length.
    """
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(windows)
    total = 0.0
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        idx, mask, types, start, end = (t.to(device) for t in collate([windows[i] for i in rows], pad_id))
        s, e = forward(idx, mask, types)  # [b, T] each
        total += float(span_loss(s, e, start, end, mask))
        s, e = s.float().cpu().numpy(), e.float().cpu().numpy()
        for r, i in enumerate(rows):
            n = len(windows[i].ids)
            out[i] = (s[r, :n], e[r, :n])
    return out, total / max(len(windows), 1)
