"""Continuous (step-level) batching: many generation requests share one running batch on one thread.

``Engine.generate`` runs one fixed batch per call; a server receives requests one by one, at any time.
The ``Scheduler`` owns the model on a dedicated thread and runs one loop (in the spirit of Orca, Yu et
al. 2022, "iteration-level scheduling", and vLLM's continuous batching, without paged attention):

1. At a step boundary, waiting requests (up to ``max_batch`` rows in all) are *admitted* (at once
   into an idle batch, else at most every ``ADMIT_EVERY`` steps: an admission rebuilds the cache): their
   prompts are prefilled together as one left-padded ragged batch (``Decoder.forward``) into a fresh
   cache, and that cache's rows are merged into the running batch's cache (``_merge``): both are
   right-aligned at a common column, so every row keeps its true positions (``pad`` = left padding),
   and the leading columns no row uses any more are dropped, so the cache never grows past
   ``block_size`` + the longest remaining budget.
2. One token is sampled for every row from its last logits with *that row's* sampling settings and its
   own ``torch.Generator`` (seeded ``seed + i`` for choice ``i``): rows with equal settings go through
   ``sampling.sample`` together, each drawing from its own generator, so a seeded request gives the
   same tokens alone or among others (up to float round-off of batched matmuls) and the same tokens as
   ``Engine`` (``lmforge generate``) with that seed (tested).
3. Rows that finish (stop token, stop string, ``max_new_tokens``, ``block_size``) or whose request was
   cancelled are *retired* at once: their ``pad`` is set to the current column, so their old keys are
   masked out and they no longer count towards ``block_size``; they leave the cache (``select_rows``)
   when a quarter of the batch is retired or at the next admission.
4. One decode step feeds every row's new token through the shared cache.

Each request's tokens go to its ``sink``, called on the model thread (the server's sink hands them to
an asyncio queue with ``loop.call_soon_threadsafe``). Other work on the model (embeddings) is queued with
``run`` and executed between steps, so the model is only ever used from the scheduler's thread.

Departures: no chunked prefill (a long prompt delays the running rows by one prefill), no preemption
(rows beyond ``max_batch`` wait in arrival order), no repetition penalty (not an OpenAI field).
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer

from lmforge.inference.rows import SamplingParams, TextState, pick, select_rows
from lmforge.model.decode_weights import DecodeWeights
from lmforge.model.decoder import Decoder
from lmforge.model.kv_cache import KVCache

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # alternatives per token at most (OpenAI's limit)
ADMIT_EVERY = 4  # while rows are generating, admit waiting requests at most every this many steps


@dataclass
class Token:
    """One event of choice ``index`` of a request: a new token (``token`` None when the row ended on a
    stop token or was cancelled), the text it releases, and ``finish_reason`` on the last event
    (``"stop"``, ``"length"``, ``"cancelled"`` or ``"error"``; then ``error`` holds the message)."""

    index: int
    token: int | None
    text: str
    finish_reason: str | None = None
    logprob: float | None = None  # log-probability under the model, before temperature / filtering
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


Sink = Callable[[Token], None]


class Handle:
    """A submitted request: ``cancel()`` stops its rows at the next step boundary."""

    def __init__(self, scheduler: Scheduler, rid: int):
        self._scheduler, self.id = scheduler, rid

    def cancel(self) -> None:
        self._scheduler._cancel(self.id)


@dataclass
class _Request:
    rid: int
    prompt: list[int]
    params: SamplingParams
    n: int
    top_logprobs: int
    sink: Sink


class _Row:
    """One sequence in the batch: a choice of a request, with its generator and text state."""

    def __init__(self, req: _Request, index: int, budget: int, tok: Tokenizer | None, device: torch.device):
        self.req, self.index, self.budget = req, index, budget
        p = req.params
        seed = p.seed + index if p.seed is not None else random.getrandbits(63)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.text = TextState(tok, p.stop) if tok is not None else None
        self.n_new = 0
        self.done = False
        self.key = (p.temperature, p.top_k, p.top_p, p.min_p)  # rows with one key share one sample() call

    def emit(self, event: Token) -> None:
        _send(self.req, event)


def _send(req: _Request, event: Token) -> None:
    try:
        req.sink(event)
    except Exception:  # a broken sink must not stop the other rows
        log.exception("sink of request %d failed", req.rid)


class Scheduler:
    """Step-level batching of generation requests on one model thread (module docstring).

    Args:
        model: the model; generation needs a ``Decoder`` (any model can serve ``run`` jobs).
        tokenizer: for text and stop strings (token ids work without it).
        max_batch: rows (sequences) generating at once; further rows wait.
        threads: torch threads for the model thread (0 = leave torch's setting).

    Use: ``start()``, ``submit(...)`` from any thread, ``stop()``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer | None = None,
        *,
        max_batch: int = 32,
        threads: int = 0,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch, self.threads = model, tokenizer, max_batch, threads
        self.weights = DecodeWeights(model) if isinstance(model, Decoder) else None
        self.block_size = model.config.block_size
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cancelled: set[int] = set()
        self._next_id = 0
        self._stopping = False
        self._since_admit = ADMIT_EVERY
        self._thread: threading.Thread | None = None
        self.rows: list[_Row] = []  # the batch, in cache-row order (model thread only)
        self.cache: KVCache | None = None
        self.logits: torch.Tensor | None = None  # [len(rows), V]: next-token logits of each row
        self.stats = {"steps": 0, "tokens": 0, "admitted": 0, "finished": 0, "cancelled": 0, "max_rows": 0}

    # -- any thread ---------------------------------------------------------------------------------

    def start(self) -> Scheduler:
        """Start the model thread (idempotent); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="lmforge-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the thread: waiting and running requests end with ``finish_reason="cancelled"``."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(
        self, prompt: Sequence[int], params: SamplingParams, sink: Sink, *, n: int = 1, top_logprobs: int = 0
    ) -> Handle:
        """Queue ``n`` choices for ``prompt`` (token ids); events go to ``sink`` on the model thread.

        Raises:
            ValueError: no decoder, an empty prompt, an id outside the vocabulary, a prompt of
                ``block_size`` tokens or more, bad ``params``, ``n`` < 1, or stop strings without a
                tokenizer.
        """
        if self.weights is None:
            raise ValueError(f"generation needs a decoder; this model is {type(self.model).__name__}")
        params.validate()
        ids = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if not ids:
            raise ValueError("prompt: needs at least one token (e.g. <|bos|>)")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt: token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if len(ids) >= self.block_size:
            raise ValueError(f"prompt: {len(ids)} tokens; the model's context holds {self.block_size - 1}")
        if n < 1:
            raise ValueError(f"n: expected an integer >= 1, got {n}")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs: expected 0..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop: stop strings need a tokenizer")
        with self._lock:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            rid = self._next_id
            self._next_id += 1
            self._waiting.append(_Request(rid, ids, params, n, top_logprobs, sink))
            self._lock.notify_all()
        return Handle(self, rid)

    def run(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the model thread between steps; returns its ``Future``."""
        fut: Future = Future()
        with self._lock:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            self._jobs.append((fn, fut))
            self._lock.notify_all()
        return fut

    def _cancel(self, rid: int) -> None:
        with self._lock:
            self._cancelled.add(rid)
            self._lock.notify_all()

    # -- the model thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.eval()
        while True:
            with self._lock:
                while not (self._stopping or self._waiting or self._jobs or self.rows):
                    self._lock.wait()
                if self._stopping:
                    break
                jobs = list(self._jobs)
                self._jobs.clear()
                cancelled, self._cancelled = self._cancelled, set()
                live = sum(not r.done for r in self.rows)
                room = self.max_batch - live
                # admitting rebuilds the cache: with rows running, gather newcomers for a few steps
                due = not live or self._since_admit >= ADMIT_EVERY
                admit = []
                while due and self._waiting and room >= 1:
                    req = self._waiting[0]
                    if req.rid in cancelled:
                        self._waiting.popleft()
                        self._finish_unstarted(req, "cancelled")
                        continue
                    if req.n > room and (self.rows or admit):
                        break  # wait until the batch has room for every choice
                    admit.append(self._waiting.popleft())
                    room -= req.n
            for fn, fut in jobs:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # handed to the caller
                        fut.set_exception(exc)
            self._since_admit = 0 if admit else self._since_admit + 1
            try:
                self._step(admit, cancelled)
            except Exception as exc:  # fail the batch, keep serving
                log.exception("generation step failed")
                self._fail_all(admit, f"{type(exc).__name__}: {exc}")
        self._fail_all([], "the server is shutting down", reason="cancelled")
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
            jobs, self._jobs = list(self._jobs), deque()
        for req in waiting:
            self._finish_unstarted(req, "cancelled")
        for _, fut in jobs:
            fut.cancel()

    def _step(self, admit: list[_Request], cancelled: set[int]) -> None:
        for row in self.rows:
            if not row.done and row.req.rid in cancelled:
                self.stats["cancelled"] += 1
                self._retire(row, Token(row.index, None, "", "cancelled"))
        if admit:
            self._admit(admit)
        elif self.rows and sum(r.done for r in self.rows) * 4 >= len(self.rows):
            self._compact()
        if not self.rows:
            return
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self.rows))
        tokens = self._sample()  # [b]
        self.stats["steps"] += 1
        if all(r.done for r in self.rows):
            self._drop_all()
            return
        self.logits = self.model(tokens[:, None], self.cache, weights=self.weights)[:, -1]

    def _admit(self, reqs: list[_Request]) -> None:
        """Prefill ``reqs`` as one ragged batch and merge them into the running batch."""
        device = self.model.tok_emb.weight.device
        new_rows: list[_Row] = []
        prompts: list[list[int]] = []
        for req in reqs:
            budget = min(req.params.max_new_tokens, self.block_size - len(req.prompt))
            if budget == 0:
                self._finish_unstarted(req, "length")
                continue
            for i in range(req.n):
                new_rows.append(_Row(req, i, budget, self.tokenizer, device))
                prompts.append(req.prompt)
        self.stats["admitted"] += len(reqs)
        if not new_rows:
            return
        width = max(len(p) for p in prompts)
        pad = torch.tensor([width - len(p) for p in prompts], device=device)
        idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
        fresh = self.model.new_kv_cache(len(prompts), width, pad=pad)
        logits = self.model(idx, fresh, weights=self.weights.refresh(), last_only=True)[:, -1]  # [n, V]
        keep = [j for j, r in enumerate(self.rows) if not r.done]
        rows = [self.rows[j] for j in keep] + new_rows
        extra = max(r.budget - r.n_new for r in rows) + 1
        if keep:
            self.cache = _merge(self.cache, torch.tensor(keep, device=device), fresh, extra)
            self.logits = torch.cat([self.logits[keep], logits])
        else:
            self.cache = _merge(None, None, fresh, extra)
            self.logits = logits
        self.rows = rows

    def _sample(self) -> torch.Tensor:
        """Pick each live row's next token from ``self.logits``, emit its event, retire finished rows;
        returns the tokens ``[b]`` to feed (anything for retired rows)."""
        logits = self.logits
        groups: dict[tuple, list[int]] = {}
        for j, row in enumerate(self.rows):
            if not row.done:
                groups.setdefault(row.key, []).append(j)
        tokens = torch.zeros(len(self.rows), dtype=torch.long, device=logits.device)  # retired rows: 0
        for js in groups.values():
            sel = torch.tensor(js, device=logits.device)
            tokens[sel] = pick(logits[sel], self.rows[js[0]].req.params, [self.rows[j].gen for j in js])
        want_lp = [j for j, r in enumerate(self.rows) if not r.done and r.req.params.logprobs]
        lps: dict[int, tuple[float, list[tuple[int, float]]]] = {}
        if want_lp:
            sel = torch.tensor(want_lp, device=logits.device)
            logp = torch.log_softmax(logits[sel].float(), dim=-1)  # [w, V]
            chosen = logp.gather(-1, tokens[sel][:, None])[:, 0].tolist()
            k_max = max(self.rows[j].req.top_logprobs for j in want_lp)
            top_v, top_i = logp.topk(k_max, dim=-1) if k_max else (None, None)
            for k, j in enumerate(want_lp):
                n_top = self.rows[j].req.top_logprobs
                top = [] if not n_top else list(zip(top_i[k, :n_top].tolist(), top_v[k, :n_top].tolist()))
                lps[j] = (chosen[k], top)
        for j, (row, token) in enumerate(zip(self.rows, tokens.tolist())):
            if row.done:
                continue
            params = row.req.params
            if token in params.stop_ids:
                self._retire(row, Token(row.index, None, row.text.flush() if row.text else "", "stop"))
                continue
            row.n_new += 1
            self.stats["tokens"] += 1
            text, stopped = row.text.add(token) if row.text else ("", False)
            lp, top = lps.get(j, (None, []))
            if stopped or row.n_new >= row.budget:
                if row.text and not stopped:
                    text += row.text.flush()
                self._retire(row, Token(row.index, token, text, "stop" if stopped else "length", lp, top))
            else:
                row.emit(Token(row.index, token, text, None, lp, top))
        return tokens

    def _retire(self, row: _Row, last: Token) -> None:
        """Send ``row``'s last event and take it out of attention (its pad covers every column)."""
        row.done = True
        self.stats["finished"] += 1
        row.emit(last)
        if self.cache is not None:
            j = self.rows.index(row)
            self.cache.pad[j] = self.cache.pos

    def _compact(self) -> None:
        keep = [j for j, r in enumerate(self.rows) if not r.done]
        if not keep:
            self._drop_all()
            return
        select_rows(self.cache, torch.tensor(keep, device=self.cache.k.device))
        self.logits = self.logits[keep]
        self.rows = [self.rows[j] for j in keep]

    def _drop_all(self) -> None:
        self.rows, self.cache, self.logits = [], None, None

    def _finish_unstarted(self, req: _Request, reason: str, error: str | None = None) -> None:
        if reason == "cancelled":
            self.stats["cancelled"] += 1
        for i in range(req.n):
            _send(req, Token(i, None, "", reason, error=error))

    def _fail_all(self, admit: list[_Request], message: str, reason: str = "error") -> None:
        """End every running row and every request being admitted with ``reason``."""
        started = {r.req.rid for r in self.rows}
        for row in self.rows:
            if not row.done:
                row.done = True
                row.emit(Token(row.index, None, "", reason, error=message if reason == "error" else None))
        for req in admit:
            if req.rid not in started:
                self._finish_unstarted(req, reason, message if reason == "error" else None)
        self._drop_all()


def _merge(old: KVCache | None, keep: torch.Tensor | None, fresh: KVCache, extra: int) -> KVCache:
    """One cache holding rows ``keep`` of ``old``, then ``fresh``'s rows, right-aligned at a common column.

    Columns no kept row uses (before the smallest kept ``pad``) are dropped; the result has room for
    ``extra`` more positions. Every row keeps its tokens' columns relative to the end, so its true
    positions (column - pad) are unchanged. Only the kept rows' used columns are copied.
    """
    n_layer, _, K, _, Q = fresh.k.shape
    parts = [(fresh.k, fresh.v, fresh.pad, 0, fresh.pos)]
    pos = fresh.pos
    if old is not None and keep is not None and len(keep):
        pad = old.pad.index_select(0, keep)
        trim = int(pad.min())
        pos = max(old.pos - trim, fresh.pos)
        k = old.k[:, keep, :, trim : old.pos]  # [L, b, K, used, Q]: one gather of what stays
        v = old.v[:, keep, :, trim : old.pos]
        parts.insert(0, (k, v, pad, trim, old.pos))
    B = sum(p[0].shape[1] for p in parts)
    out = KVCache(B, pos + extra, n_layer, K, Q, dtype=fresh.k.dtype, device=fresh.k.device)
    out.pos = pos
    pads, row = [], 0
    for k, v, pad, start, end in parts:
        width, b = end - start, k.shape[1]
        out.k[:, row : row + b, :, pos - width : pos] = k[:, :, :, :width]
        out.v[:, row : row + b, :, pos - width : pos] = v[:, :, :, :width]
        pads.append(pad - start + (pos - width))
        row += b
    out.pad = torch.cat(pads).clamp_(max=pos)
    return out


__all__ = ["Handle", "Scheduler", "Token"]
