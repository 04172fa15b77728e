"""Exact speculative decoding for ``Engine``: draft up to k tokens per row, verify them all in one
cached forward of the target, keep the longest prefix the target agrees with plus the target's own
next token. A pass reads the target's weights once and emits 1 .. k+1 tokens per row.

Drafters (``Engine(..., draft=...)``):

- ``"ngram"`` — prompt lookup (Saxena 2023, "Prompt Lookup Decoding"; Hugging Face's
  ``prompt_lookup_num_tokens``): the row's last n tokens (n = ``ngram_max`` down to 1) are looked up
  in the earlier text of that row (prompt and generated), and the up to k tokens that followed the
  most recent earlier occurrence are the draft. No model; a row without a match drafts nothing, and a
  pass where no row drafts is a plain one-token decode step.
- a ``Decoder`` — a smaller model with the same vocabulary and its own KV cache. It drafts greedily
  at temperature 0, else by sampling from its own distribution after the same temperature / top-k /
  top-p / min-p filtering as the target.

Verification: each row feeds ``[last token, drafts..]`` (rows with fewer drafts are filled up to the
batch's width; those columns are ignored) through the decoder's one forward (``Decoder.forward`` with
the engine's ``DecodeWeights``) at ``cache.pos`` and reads the target's logits at every column.

- Greedy: a draft is kept while it equals the target's argmax; the target's argmax at the first
  mismatch (or after the last draft) is emitted too. The tokens are those of plain greedy decoding.
- Sampling: speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via
  Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling"):
  with ``p`` the target's filtered distribution and ``q`` the draft's, draft ``x`` is kept with
  probability ``min(1, p(x) / q(x))``; the first rejected one is replaced by a draw from
  ``max(0, p - q)`` renormalised; if all are kept a bonus token is drawn from ``p``. Each emitted token
  is distributed as under plain sampling from the target. A point-mass draft (n-gram) has ``q(x) = 1``:
  ``x`` is kept with probability ``p(x)``, else the token is drawn from ``p`` without ``x``. ``p`` and
  ``q`` are ``sampling.distribution``, and every token drawn (draft, replacement, bonus, the first token)
  is ``sampling.draw`` from the row's generator, the draws plain decoding makes.

Draft length: each row drafts up to ``want`` tokens, adapted after every pass (``adapt``): longer
after a fully accepted draft, shorter after a rejection, none for a while after drafts that all fail
(speculation on unpredictable text then costs little more than plain decoding).

Whether drafting pays (``SpeedGate``, greedy only): a pass over k+1 columns costs more than a one-token
step, a lot more at batch 8 on a CPU, where the matmuls are no longer bound by reading the weights, and
a draft model adds its own steps. The loop times its passes and compares tokens per second over
windows of 8 drafting passes with that of plain passes (a call starts with two, and one follows
every 4th window drafting wins); while drafting is slower, passes draft nothing for 16, 32, .. 128
passes, each followed by a probe of 2 drafting passes. ``Engine(..., draft_gate=False)`` drafts on
every pass.

Ragged acceptance: the rows of a batch share one cache column counter (left padding,
``Decoder.hidden_states``). After a pass row ``b`` has ``v_b`` = 1 + accepted drafts new valid columns;
the shared position moves by ``max(v)`` and each row's cache is moved right by ``max(v) - v_b``
(``KVCache.shift_rows``), which keeps every key's position (column minus padding) and its rotation.
When the cache would run out of columns, the padding common to every row is dropped
(``KVCache.drop_left``). A draft model's cache has the same layout and moves with the target's. Rows
leave the batch as soon as they finish.

Departures and limits:

- ``repetition_penalty != 1`` is not speculated: the engine decodes such calls plainly (the penalty at
  a drafted position would depend on the drafts before it). Every other ``SamplingParams`` field works
  as without a draft: stop tokens and strings, ``max_new_tokens``, ``block_size``, ``logprobs`` (the
  target's log-probability of each emitted token), seeds.
- Greedy equality is exact in the arithmetic sense only: the target's matmuls over k+1 columns may
  round differently from one column at a time, so at a near-tie of the two best logits (a difference
  of ~1e-6) the argmax can differ from plain decoding's — as plain decoding can differ from Hugging
  Face's on the same weights.
- A seeded call is reproducible, and rows draw from their own generators (``seed + i``), but the
  random numbers are used differently than without a draft: the same seed gives another sample (from
  the same distribution) than plain decoding does.
- Streaming: each row's events (tokens, text, finish reason) are those of plain decoding, in the same
  order; within a pass all of one row's new tokens are yielded before the next row's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.config import ConfigError
from lmforge.inference.rows import Batch, Event, RowOutput, SamplingParams, pick, select_rows
from lmforge.inference.sampling import distribution, draw
from lmforge.model.decode_weights import DecodeWeights
from lmforge.model.decoder import Decoder
from lmforge.model.kv_cache import KVCache
from lmforge.runstore import TOKENIZER_FILE

if TYPE_CHECKING:  # the engine dispatches to this module; only its type is needed here
    from lmforge.inference.engine import Engine


def check_draft(model: Decoder, draft: object, draft_tokens: int, ngram_max: int) -> None:
    """Raise ``ValueError`` naming the argument if the draft settings cannot serve ``model``."""
    for name, value in (("draft_tokens", draft_tokens), ("ngram_max", ngram_max)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if draft is None or draft == "ngram":
        return
    if not isinstance(draft, Decoder):
        raise ValueError(f"draft: expected None, 'ngram' or an lmforge Decoder, got {draft!r}")
    if draft.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"draft: the draft model's vocabulary ({draft.config.vocab_size} tokens) differs from the "
            f"target's ({model.config.vocab_size}); it must use the same tokenizer"
        )
    if draft.config.block_size < model.config.block_size:
        raise ValueError(
            f"draft: the draft model's block_size {draft.config.block_size} is shorter than the "
            f"target's {model.config.block_size}"
        )
    if draft.tok_emb.weight.device != model.tok_emb.weight.device:
        raise ValueError(
            f"draft: the draft model is on {draft.tok_emb.weight.device}, the target on "
            f"{model.tok_emb.weight.device}"
        )


def check_draft_options(draft: str, draft_model: str, draft_tokens: int) -> None:
    """The CLI's draft options (``--draft none|ngram|model``, ``--draft_model``, ``--draft_tokens``) of
    ``lmforge generate`` and ``lmforge chat``, checked before any work.

    Raises:
        ConfigError: ``--draft model`` without ``--draft_model``, ``--draft_model`` without ``--draft
            model``, ``draft_tokens`` < 1.
    """
    if draft == "model" and not draft_model:
        raise ConfigError(
            "draft_model",
            "--draft model needs the draft: --draft_model PATH (a checkpoint or training stage "
            "directory of a smaller model with the target's tokenizer)",
        )
    if draft_model and draft != "model":
        raise ConfigError(
            "draft",
            f"--draft_model {draft_model} is set but draft is {draft!r}; use --draft model "
            "to decode with it (or drop --draft_model)",
        )
    if draft_tokens < 1:
        raise ConfigError("draft_tokens", f"must be >= 1, got {draft_tokens}")


def load_draft(path: Path, which: str, target: Decoder, tokenizer: object) -> Decoder:
    """The draft model at ``path`` (a checkpoint, or the ``which`` checkpoint of a training stage) on
    ``target``'s device, checked to serve ``target`` (the CLI's ``--draft_model``).

    Raises:
        ConfigError (``draft_model``): not a decoder; its tokenizer is not ``tokenizer`` (both sizes
            named); another vocabulary size, a shorter context (``check_draft``).
        InputError: nothing under ``path`` is a complete checkpoint.
    """
    from lmforge.model.checkpoint import load_model, resolve_checkpoint
    from lmforge.tokenizer.train import load_tokenizer

    ckpt = resolve_checkpoint(path, which)
    draft, mcfg = load_model(ckpt, device=target.tok_emb.weight.device)
    if mcfg.arch != "decoder":
        raise ConfigError("draft_model", f"{ckpt} is an {mcfg.arch}; a draft must be a decoder checkpoint")
    if (ckpt / TOKENIZER_FILE).is_file():
        own, vocab = load_tokenizer(ckpt / TOKENIZER_FILE), tokenizer.get_vocab()  # type: ignore[attr-defined]
        if own.get_vocab() != vocab:
            same = " (same size, other tokens)" if own.get_vocab_size() == len(vocab) else ""
            raise ConfigError(
                "draft_model",
                f"{ckpt}: the draft's tokenizer ({own.get_vocab_size()} tokens) differs from the "
                f"target's ({len(vocab)} tokens){same}; the draft must use the target's tokenizer",
            )
    try:
        check_draft(target, draft, 1, 1)
    except ValueError as exc:  # vocabulary size, context
        raise ConfigError("draft_model", f"{ckpt}: {str(exc).removeprefix('draft: ')}") from exc
    return draft


def ngram_draft(seq: list[int], ngram_max: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the most recent earlier occurrence of ``seq``'s last ``n``
    tokens, for the largest ``n <= ngram_max`` that occurs earlier; ``[]`` when none does."""
    L = len(seq)
    for n in range(min(ngram_max, L - 1), 0, -1):
        tail = seq[L - n :]
        first = tail[0]
        for i in range(L - n - 1, -1, -1):  # start of an earlier occurrence, most recent first
            if seq[i] == first and seq[i : i + n] == tail:
                return seq[i + n : i + n + k]
    return []


class NgramDrafter:
    """Prompt-lookup drafts (``ngram_draft``); no state, no cache."""

    def __init__(self, ngram_max: int):
        self.ngram_max = ngram_max

    def prefill(self, idx: torch.Tensor, pad: torch.Tensor, max_len: int) -> None:
        return None

    def propose(
        self, seqs: list[list[int]], counts: list[int], params: SamplingParams, gens: list | None, pos: int
    ) -> tuple[list[list[int]], torch.Tensor | None]:
        """Drafts per row (at most ``counts[b]`` tokens) and ``None``: each draft is a point mass."""
        return [ngram_draft(s, self.ngram_max, c) if c > 0 else [] for s, c in zip(seqs, counts)], None

    def select_rows(self, rows: torch.Tensor) -> None:
        return None

    def commit(self, pos: int, kept: list[int], shifts: list[int], new_pos: int) -> None:
        return None

    def drop_left(self, n: int) -> None:
        return None


class ModelDrafter:
    """Drafts from a smaller ``Decoder`` with its own cache, laid out as the target's (same padding,
    same columns, moved by the same shifts)."""

    def __init__(self, model: Decoder):
        self.model, self.weights = model, DecodeWeights(model)
        self.cache: KVCache | None = None
        self.steps = 0  # draft steps of the latest proposal

    def prefill(self, idx: torch.Tensor, pad: torch.Tensor, max_len: int) -> None:
        """Fill the draft's cache with the (left-padded) prompts ``idx`` ``[B, W]``."""
        self.cache = self.model.new_kv_cache(len(pad), max_len, pad=pad)
        self.model(idx, self.cache, weights=self.weights.refresh(), last_only=True)

    def propose(
        self, seqs: list[list[int]], counts: list[int], params: SamplingParams, gens: list | None, pos: int
    ) -> tuple[list[list[int]], torch.Tensor | None]:
        """Drafts per row (``counts[b]`` tokens) and, when sampling, the draft's distribution of each
        ``[B, max(counts), V]`` (``None`` at temperature 0). ``pos`` is the target cache's position: the
        column of every row's last (not yet cached) token."""
        cache = self.cache
        assert cache is not None
        m = max(counts)
        self.steps = m
        drafts: list[list[int]] = [[] for _ in seqs]
        if m == 0:
            return drafts, None
        pads = cache.pad.tolist()
        start = cache.pos  # columns start .. pos of each row are not in the draft's cache yet
        # a row's columns before its padding ends are masked: any token will do there (0)
        feed = [[s[c - p] if c >= p else 0 for c in range(start, pos + 1)] for s, p in zip(seqs, pads)]
        feed_t = torch.tensor(feed, device=cache.k.device)
        logits = self.model(feed_t, cache, weights=self.weights, last_only=True)[:, -1]
        sampling = params.temperature > 0
        qs = []
        for j in range(m):
            if sampling:
                q = distribution(logits, **params.filters())  # [B, V]
                qs.append(q)
                tokens = draw(q, gens).tolist()  # rows past their count draw too (unused)
            else:
                tokens = logits.argmax(dim=-1).tolist()
            for b, c in enumerate(counts):
                if c > j:
                    drafts[b].append(tokens[b])
            if j + 1 < m:
                step = torch.tensor(tokens, device=cache.k.device)[:, None]
                logits = self.model(step, cache, weights=self.weights)[:, -1]
        return drafts, torch.stack(qs, dim=1) if sampling else None

    def select_rows(self, rows: torch.Tensor) -> None:
        assert self.cache is not None
        select_rows(self.cache, rows)

    def commit(self, pos: int, kept: list[int], shifts: list[int], new_pos: int) -> None:
        """The target kept ``kept[b]`` columns from ``pos`` on and moved row ``b`` by ``shifts[b]``;
        move the draft's rows alike and set its position to the first column not valid in every row."""
        cache = self.cache
        assert cache is not None
        # the draft fed columns .. pos + steps - 1 this pass; of those, pos .. pos + kept - 1 hold tokens
        # the target kept (the last drafted token was never fed)
        valid = [pos + min(v, self.steps) if self.steps else cache.pos for v in kept]
        cache.pos = new_pos
        cache.shift_rows(shifts)
        cache.pos = min(v + s for v, s in zip(valid, shifts))

    def drop_left(self, n: int) -> None:
        assert self.cache is not None
        self.cache.drop_left(n)


def verify(
    logits: torch.Tensor,
    drafts: list[list[int]],
    q: torch.Tensor | None,
    params: SamplingParams,
    gens: list[torch.Generator] | None,
) -> tuple[list[list[int]], list[int]]:
    """Each row's emitted tokens (kept drafts, then the target's own token) and its count of kept drafts.

    Args:
        logits: the target's logits ``[B, T, V]`` at the columns ``[last token, drafts..]``.
        drafts: per row, at most ``T - 1`` drafted tokens.
        q: the draft's distributions ``[B, >= len(drafts[b]), V]``, or ``None`` for point-mass drafts
            (and at temperature 0, where it is not used).
        params: temperature 0 is greedy acceptance, else speculative sampling (module docstring).
        gens: row ``b``'s random generator, or ``None`` for the global one.
    """
    out: list[list[int]] = []
    kept: list[int] = []
    if params.temperature == 0:
        best = logits.argmax(dim=-1).tolist()  # [B][T]
        for b, d in enumerate(drafts):
            a = 0
            while a < len(d) and d[a] == best[b][a]:
                a += 1
            out.append(d[:a] + [best[b][a]])
            kept.append(a)
        return out, kept
    B, T, V = logits.shape
    p = distribution(logits.reshape(B * T, V), **params.filters()).view(B, T, V)
    for b, d in enumerate(drafts):
        g = None if gens is None else gens[b]
        row_gen = None if gens is None else [g]
        tokens: list[int] = []
        for a, x in enumerate(d):
            qx = 1.0 if q is None else float(q[b, a, x])
            if float(torch.rand((), generator=g, device=p.device)) < float(p[b, a, x]) / qx:
                tokens.append(x)
                continue
            if q is None:
                residual = p[b, a].clone()
                residual[x] = 0
            else:
                residual = (p[b, a] - q[b, a]).clamp_(min=0)
            if float(residual.sum()) <= 0:  # only by rounding (a rejection needs p(x) < q(x))
                residual = p[b, a]
            tokens.append(int(draw(residual[None], row_gen)))
            break
        else:
            tokens.append(int(draw(p[b, len(d)][None], row_gen)))
        out.append(tokens)
        kept.append(len(tokens) - 1)
    return out, kept


def adapt(want: float, drafted: int, kept: int, k: int) -> float:
    """The next draft length of a row that drafted ``drafted`` tokens and kept ``kept`` (speed only; the
    output never depends on it). All kept: two more (as Hugging Face's assisted generation schedule),
    up to ``k``; some kept: one more than the kept run; none kept: half, so a row whose drafts keep
    failing stops drafting (below 1), then probes again after a few passes (+0.25 per pass without)."""
    if drafted == 0:
        return min(float(k), want + 0.25) if want < 1 else want
    if kept == drafted:
        return min(float(k), want + 2)
    return float(kept + 1) if kept else want / 2


class SpeedGate:
    """Whether drafting pays on this machine for this batch, by measurement: tokens per second of passes
    that verified drafts, summed over a window (one pass emits 1 .. k+1 tokens per row, so one pass
    says little), against passes that did not (an exponential average; their rate is steady; a call
    starts with two, the first untimed as it may pay one-time setup, and every 4th won window is
    followed by one). A window of ``window`` drafting passes decides; while drafting is measured
    slower, passes draft nothing for ``backoff`` passes, doubling up to ``max_backoff``, and then a
    cheap probe of ``probe`` drafting passes decides again (a wrong "slower" costs little, a wrong
    "faster" one window). Greedy decoding only, where the output never depends on it (every pass is
    exact); when sampling it stays open, so a seed reproduces whatever the timing."""

    def __init__(
        self,
        enabled: bool = True,
        window: int = 8,
        probe: int = 2,
        backoff: int = 16,
        max_backoff: int = 128,
        weight: float = 0.3,
    ):
        self.enabled = enabled  # False: every pass may draft
        self.window, self.probe, self.weight = window, probe, weight
        self.first_backoff, self.max_backoff = backoff, max_backoff
        self.backoff = backoff
        self.plain: float | None = None  # tokens per second of passes without drafts
        self.tokens = self.seconds = 0.0  # of the drafting passes since the last decision
        self.passes = 0
        self.need = window  # drafting passes to the next decision
        self.off = 2  # passes left without drafts: two plain passes first (the first is not timed)
        self.warm = False  # whether a plain pass has run (the first may pay one-time setup)
        self.wins = 0  # windows in a row where drafting was faster

    def allow(self) -> bool:
        """Whether the next pass may draft."""
        if not self.enabled:
            return True
        if self.off > 0:
            self.off -= 1
            return False
        return True

    def record(self, drafted: bool, tokens: int, seconds: float) -> None:
        """One pass: whether it verified drafts, the tokens it emitted, its wall time."""
        if not self.enabled:
            return
        if not drafted:
            if not self.warm:
                self.warm = True  # e.g. weights packed on this pass: not a rate
                return
            rate = tokens / max(seconds, 1e-9)
            self.plain = rate if self.plain is None else (1 - self.weight) * self.plain + self.weight * rate
            return
        self.tokens, self.seconds, self.passes = self.tokens + tokens, self.seconds + seconds, self.passes + 1
        if self.plain is None or self.passes < self.need:
            return
        if self.tokens / max(self.seconds, 1e-9) < self.plain:
            self.off, self.need, self.wins = self.backoff, self.probe, 0
            self.backoff = min(2 * self.backoff, self.max_backoff)
        else:
            self.backoff, self.need, self.wins = self.first_backoff, self.window, self.wins + 1
            if self.wins % 4 == 0:
                self.off = 1  # one plain pass now and then keeps the plain rate current
        self.tokens = self.seconds = 0.0
        self.passes = 0


def speculative_loop(
    engine: Engine, rows: list[list[int]], params: SamplingParams, batch: Batch
) -> Iterator[Event]:
    """``Engine._loop`` with drafting and verification (module docstring); ``rows`` are already cropped
    to ``block_size - 1`` tokens, ``batch`` is them left-padded with a budget > 0 for some row, and the
    model is in eval mode."""
    model, block, k = engine.model, engine.block_size, engine.draft_tokens
    stats = engine.stats
    device = engine.model.tok_emb.weight.device
    B = len(rows)
    budget, pad, idx, gens = batch.budget, batch.pad, batch.idx, batch.gens
    draft = engine.draft
    drafter = NgramDrafter(engine.ngram_max) if draft == "ngram" else ModelDrafter(draft)
    max_len = idx.shape[1] + max(budget) + k + 1
    cache = model.new_kv_cache(B, max_len, pad=pad)
    out = RowOutput(engine.tokenizer, params, budget)
    seqs = [list(r) for r in rows]  # per cache row: prompt + emitted tokens; the last is not cached yet
    alive = list(range(B))  # the prompt index of each cache row
    weights = engine.weights.refresh()
    logits = model(idx, cache, weights=weights, last_only=True)[:, -1]  # [B, V]
    drafter.prefill(idx, pad, max_len)
    first = pick(logits, params, gens).tolist()
    lps = [None] * B
    if params.logprobs:
        lps = (
            torch.log_softmax(logits.float(), dim=-1)
            .gather(-1, torch.tensor(first, device=device)[:, None])[:, 0]
            .tolist()
        )
    for i, token in enumerate(first):
        yield out.emit(i, token, lps[i])
        seqs[i].append(token)
    stats.tokens = out.emitted
    kept_counts = [0] * B
    want = [float(k)] * B  # per row: how many tokens to draft next (adapted to its acceptance)
    # a timing-driven choice would change which random numbers a seeded sample uses: greedy only
    gate = SpeedGate(engine.draft_gate and params.temperature == 0)
    pos = cache.pos
    while True:
        keep = [j for j, i in enumerate(alive) if not out.done[i]]
        if not keep:
            return
        if len(keep) < len(alive):  # finished rows leave the batch and both caches at once
            rows_kept = torch.tensor(keep, device=device)
            select_rows(cache, rows_kept)
            drafter.select_rows(rows_kept)
            seqs = [seqs[j] for j in keep]
            gens = None if gens is None else [gens[j] for j in keep]
            kept_counts = [kept_counts[j] for j in keep]
            want = [want[j] for j in keep]
            alive = [alive[j] for j in keep]
        if pos != cache.pos:  # after a pass: realign the rows on the longest kept run of columns
            most = max(kept_counts) + 1
            shifts = [most - (a + 1) for a in kept_counts]
            cache.pos = pos + most
            cache.shift_rows(shifts)
            drafter.commit(pos, [a + 1 for a in kept_counts], shifts, cache.pos)
            if cache.pos + k + 1 > max_len:
                common = int(cache.pad.min())
                cache.drop_left(common)
                drafter.drop_left(common)
        pos = cache.pos
        pads = cache.pad.tolist()
        room = min(min(block - (pos - p) for p in pads), max_len - pos)  # columns every row can take
        started = time.perf_counter()  # the pass's own time: draft, verify (not the caller's, between yields)
        allow = gate.allow()
        counts = [
            max(0, min(int(w), budget[i] - out.n_new[i] - 1, room - 1)) if allow else 0
            for i, w in zip(alive, want)
        ]
        drafts, q = drafter.propose(seqs, counts, params, gens, pos)
        T = 1 + max(len(d) for d in drafts)
        feed = [[s[-1], *d] + [s[-1]] * (T - 1 - len(d)) for s, d in zip(seqs, drafts)]
        logits = model(torch.tensor(feed, device=device), cache, weights=weights)  # [b, T, V]
        stats.passes += 1
        new, kept_counts = verify(logits, drafts, q, params, gens)
        gate.record(T > 1, sum(len(t) for t in new), time.perf_counter() - started)
        if allow:  # a pass the gate held back says nothing about a row's acceptance
            want = [adapt(w, len(d), a, k) for w, d, a in zip(want, drafts, kept_counts)]
        stats.drafted += sum(len(d) for d in drafts)
        stats.accepted += sum(kept_counts)
        logp = torch.log_softmax(logits.float(), dim=-1) if params.logprobs else None  # [b, T, V]
        for j, tokens in enumerate(new):
            i = alive[j]
            for t, token in enumerate(tokens):
                yield out.emit(i, token, None if logp is None else float(logp[j, t, token]))
                if out.done[i]:
                    break
                seqs[j].append(token)
        stats.tokens = out.emitted


__all__ = [
    "ModelDrafter",
    "NgramDrafter",
    "SpeedGate",
    "adapt",
    "check_draft",
    "check_draft_options",
    "load_draft",
    "ngram_draft",
    "speculative_loop",
    "verify",
]
