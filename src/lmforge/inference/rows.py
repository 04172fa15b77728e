"""What a decode loop is made of, shared by the engine (``engine.py``) and speculative decoding
(``speculative.py``): the sampling parameters of a call, the left-padded ``Batch``, the per-token
``Event`` and final ``Completion``, one token pick per row (``pick``), the per-row text state that
holds back stop strings and incomplete UTF-8 (``RowOutput``, ``TextState``), the call's counters
(``DecodeStats``) and cache row selection. Split out of the engine so that speculative decoding, which
the engine dispatches to, imports these and not the engine (no import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from lmforge.inference.sampling import check_sampling_args, sample
from lmforge.model.kv_cache import KVCache


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop (sampling order: ``sampling.py``)."""

    max_new_tokens: int = 64  # new tokens per row at most
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens (None = all)
    top_p: float | None = None  # nucleus mass (None = off)
    min_p: float | None = None  # drop tokens below min_p * p(top token) (None = off)
    repetition_penalty: float = 1.0  # CTRL penalty on tokens in the prompt or generated (1 = off)
    seed: int | None = None  # row i draws from a generator seeded seed + i (None = global RNG)
    stop: Sequence[str] = ()  # stop strings: the text ends before the first one (needs a tokenizer)
    stop_ids: frozenset[int] | set[int] = frozenset()  # stop tokens, not included in the output
    logprobs: bool = False  # report each token's log-probability under the model (before any processing)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible setting."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {self.max_new_tokens}")
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty)
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop: expected a list of non-empty strings, got {self.stop!r}")

    def filters(self) -> dict:
        """The keyword arguments of ``sampling.sample``/``distribution`` these parameters set (the filters)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
        }


@dataclass
class Batch:
    """Prompts left-padded to one width (``Decoder.hidden_states``), with each row's budget of new tokens
    (``max_new_tokens``, capped by ``block_size``) and, for a seeded call, row ``i``'s generator seeded
    ``seed + i``."""

    lengths: list[int]  # prompt tokens per row
    budget: list[int]  # new tokens per row at most
    pad: torch.Tensor  # [B] padding columns per row
    idx: torch.Tensor  # [B, W] the left-padded prompts
    gens: list[torch.Generator] | None


@dataclass
class Event:
    """One new token of row ``row``: its id, the text it releases (may be ``""``), and ``finish_reason``
    (``None`` while the row goes on; ``"stop"`` / ``"length"`` on its last event)."""

    row: int
    token: int | None
    text: str
    finish_reason: str | None = None
    logprob: float | None = None  # with ``SamplingParams.logprobs``


@dataclass
class Completion:
    """The result for one prompt."""

    ids: list[int] = field(default_factory=list)  # generated ids (stop token excluded)
    text: str = ""  # decoded text, cut before a stop string
    finish_reason: str = "length"
    prompt_tokens: int = 0
    logprobs: list[float] = field(default_factory=list)  # per generated id, with ``SamplingParams.logprobs``


def pick(
    logits: torch.Tensor,
    params: SamplingParams,
    gens: list[torch.Generator] | None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token of each row ``[B]`` from ``logits`` ``[B, V]``: ``sampling.sample`` with ``params``."""
    penalty = params.repetition_penalty if seen is not None else 1.0
    return sample(logits, **params.filters(), generators=gens, seen=seen, repetition_penalty=penalty)


@dataclass
class DecodeStats:
    """What one ``Engine`` call cost: target forward passes after the prefill, tokens emitted, (with
    a draft) tokens drafted and accepted, and the thread count it ran on. Plain decoding has one pass per
    token step of the batch."""

    passes: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    threads: int = 0  # torch threads the call decoded with (the engine's ``threads`` choice)
    thread_switches: int = 0  # moves between 1 and N threads during the call (``probe.ThreadGovernor``)

    @property
    def tokens_per_pass(self) -> float:
        """Emitted tokens per target pass (the first token, from the prefill, counts as one pass)."""
        return self.tokens / max(self.passes + 1, 1)

    @property
    def acceptance(self) -> float:
        """Fraction of drafted tokens the target accepted (0 without drafts)."""
        return self.accepted / self.drafted if self.drafted else 0.0


class RowOutput:
    """The output side of every row: its token count, its ``TextState``, ``done``; turns each new token
    into the row's ``Event`` (stop token, stop string, ``budget``), the one place finishing is decided."""

    def __init__(self, tokenizer: Tokenizer | None, params: SamplingParams, budget: list[int]):
        self.params, self.budget = params, budget
        self.texts = [TextState(tokenizer, params.stop) if tokenizer is not None else None for _ in budget]
        self.done = [False] * len(budget)
        self.n_new = [0] * len(budget)
        self.emitted = 0  # tokens emitted over all rows (stop tokens excluded)

    def emit(self, i: int, token: int, logprob: float | None = None) -> Event:
        """Row ``i``'s event for ``token`` (the row must not be done); sets ``done[i]`` when it ends."""
        text_state = self.texts[i]
        if token in self.params.stop_ids:
            self.done[i] = True
            return Event(i, None, text_state.flush() if text_state else "", "stop")
        self.n_new[i] += 1
        self.emitted += 1
        text, stopped = text_state.add(token) if text_state else ("", False)
        if stopped or self.n_new[i] >= self.budget[i]:
            self.done[i] = True
            if text_state and not stopped:
                text += text_state.flush()
            return Event(i, token, text, "stop" if stopped else "length", logprob)
        return Event(i, token, text, None, logprob)


def select_rows(cache: KVCache, rows: torch.Tensor) -> None:
    """Keep only ``rows`` (indices ``[b]``) of every tensor of ``cache``, in place."""
    cache.k = cache.k.index_select(1, rows)
    cache.v = cache.v.index_select(1, rows)
    cache.pad = cache.pad.index_select(0, rows)
    cache.batch_size = len(rows)


class TextState:
    """Incremental text of one row: releases text once it cannot be part of a stop string or an
    incomplete UTF-8 character, and finds the first stop string.

    Detokenisation is incremental (as vLLM's ``detokenize_incrementally``): each token decodes a short
    window ``ids[prefix:]`` that starts one stable chunk back (so decoders that join or strip at token
    boundaries see their context), and the window's text past ``decode(ids[prefix:read])`` is appended
    once it does not end in an incomplete character. The text equals ``decode(ids)`` (tested) at
    O(1) cost per token instead of re-decoding the whole row, and stop strings are searched only where
    a new one could end.
    """

    def __init__(self, tok: Tokenizer, stop: Sequence[str]):
        self.tok, self.stop = tok, list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # the stable text so far (what decode(ids[:read]) gives)
        self.released = 0
        self.prefix = self.read = 0  # ids[prefix:read]: context of the window; ids[read:]: pending
        self.prefix_text = ""  # decode(ids[prefix:read])

    def _pending(self) -> tuple[str, bool]:
        """Text of the pending ids and whether it is complete (no trailing replacement character)."""
        window = self.tok.decode(self.ids[self.prefix :], skip_special_tokens=False)
        if len(window) <= len(self.prefix_text) or not window.startswith(self.prefix_text):
            window = self.tok.decode(self.ids, skip_special_tokens=False)  # no usable context: decode all
            return window[len(self.text) :], not window.endswith("\ufffd")
        return window[len(self.prefix_text) :], not window.endswith("\ufffd")

    def add(self, token: int) -> tuple[str, bool]:
        """Add a token; return ``(text released now, whether a stop string was found)``."""
        self.ids.append(token)
        new, complete = self._pending()
        if not complete:
            return "", False
        before = len(self.text)
        self.text += new
        self.prefix_text = self.tok.decode(self.ids[self.read :], skip_special_tokens=False)
        self.prefix, self.read = self.read, len(self.ids)
        if self.stop:
            since = max(0, before - self.hold)  # an earlier stop string would have been found already
            cut = min((i for i in (self.text.find(s, since) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                return self.flush(), True
        safe = len(self.text) - self.hold
        if safe <= self.released:
            return "", False
        out, self.released = self.text[self.released : safe], safe
        return out, False

    def flush(self) -> str:
        """Release everything not yet released (pending ids included, even if incomplete)."""
        if self.read < len(self.ids):
            self.text += self._pending()[0]
            self.prefix = self.read = len(self.ids)
            self.prefix_text = ""
        out, self.released = self.text[self.released :], len(self.text)
        return out


def default_stop_ids(tok: Tokenizer) -> frozenset[int]:
    """The ids that end a plain continuation: ``<|bos|>``, ``<|eos|>`` and ``<|end|>`` where present."""
    ids = (tok.token_to_id(t) for t in ("<|bos|>", "<|eos|>", "<|end|>"))
    return frozenset(i for i in ids if i is not None)
