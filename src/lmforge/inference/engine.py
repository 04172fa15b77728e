"""The generation engine: prefill + cached decode over a batch of prompts, with streaming.

One loop serves ``lmforge generate``, ``lmforge chat``, evaluation's generative tasks, alignment
rollouts and the server. Shape of a call (after nanochat's engine):

1. Prompts (lists of token ids, any lengths) are left-padded to a common length and prefilled in one
   forward pass into a preallocated KV cache; each row keeps its true positions (the decoder's one
   forward, ``Decoder.forward(idx, cache, weights=...)``, with matrices prepared once per call by
   ``DecodeWeights``).
2. Each step samples one token per unfinished row from the last logits with ``sampling.sample``
   (``SamplingParams``: greedy, temperature, top-k, top-p, min-p, repetition penalty; row ``i`` of a
   seeded call draws from its own generator seeded ``seed + i``, so a row's sample does not depend on
   its batch-mates, and a seeded request to the serving scheduler gives the same tokens), then one
   decode step feeds all rows' new tokens through the cache.
3. A row finishes on a stop token (not included), on a stop string (the text is cut before it), when it
   has ``max_new_tokens`` tokens, or when it reaches the model's ``block_size`` (``finish_reason``
   ``"stop"`` or ``"length"``). Once at most 3/4 of the batch is still generating, finished rows are
   dropped from the batch and the cache. The loop ends when every row has finished.

``Engine.stream`` yields one ``Event`` per new token with the text it adds (held back while it could be
the start of a stop string or an incomplete UTF-8 character); ``Engine.generate`` collects the events
into ``Completion``\\ s. Greedy decoding through the engine equals greedy decoding by full forward passes
without a cache, token for token (tested, ragged batches included).

``Engine(..., draft="ngram" | Decoder, draft_tokens=k)`` decodes speculatively instead
(``speculative.py``): k drafted tokens per row are verified in one cached forward of the model, with
the same output (greedy: token for token; sampling: in distribution) and the same per-row events.
``Engine.stats`` (``DecodeStats``) counts the model's passes, drafted and accepted tokens of the last call.

Threads: ``Engine(..., threads="auto")`` (the default) decodes each call on the torch thread count that
``probe.choose_threads`` measured to be faster for this model and batch on this machine (1 or all of the
process's threads; cached per machine and shape); an integer fixes it, 0 leaves torch's setting alone.
The count is set for the call (while its events are consumed) and put back when it ends; it is recorded in
``Engine.stats.threads``. While a plain (not speculative), unseeded ``"auto"`` call runs, a
``probe.ThreadGovernor`` times its steps and moves it to the other count when that is measured faster
(another job took a core; ``stats.thread_switches``), and the next call starts where it ended. A seeded
call keeps its count: the counts' matmuls round differently, and a seed must reproduce.

Departure from unbounded generation: prompts longer than ``block_size - 1`` tokens keep their last
``block_size - 1`` tokens, and generation stops at ``block_size`` (no sliding window: the cache is exact).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
from tokenizers import Tokenizer

from lmforge.inference.probe import ThreadGovernor, batch_bucket, choose_threads
from lmforge.inference.rows import (
    Batch,
    Completion,
    DecodeStats,
    Event,
    RowOutput,
    SamplingParams,
    pick,
    select_rows,
)
from lmforge.inference.speculative import check_draft, speculative_loop
from lmforge.model.decode_weights import DecodeWeights
from lmforge.model.decoder import Decoder

COMPACT_AT = 0.75  # compact the batch once at most this fraction of its rows is still generating


class Engine:
    """Batched, cached generation for an lmforge ``Decoder``.

    Args:
        model: the decoder (put in eval mode for each call; its mode is restored afterwards).
        tokenizer: needed for text (``Completion.text``, event text, stop strings); ids work without.
        weights: ``"exact"`` (default) or ``"int8"``: weight-only int8 matmuls, faster decoding with
            outputs close to but not equal to the exact model's (``model/decode_weights.py``).
        draft: speculative decoding (``speculative.py``): ``None`` (default, one token per forward),
            ``"ngram"`` (prompt lookup: drafts copied from earlier text of the row) or a smaller
            ``Decoder`` with the same vocabulary. The output is the target's either way (greedy: token
            for token; sampling: in distribution); repetition penalty falls back to plain decoding.
        draft_tokens: tokens drafted per verification pass (k >= 1).
        ngram_max: longest suffix the ``"ngram"`` drafter matches (it tries ``ngram_max`` down to 1).
        draft_gate: when decoding greedily, measure whether passes with drafts emit more tokens per
            second than plain ones, and decode plainly while they do not (``speculative.SpeedGate``;
            speed only, the output is the same). ``False`` drafts on every pass, whatever it costs.
            Sampling always drafts (a timing-driven choice would change a seeded sample).
        threads: torch threads to decode with: ``"auto"`` (measured, module docstring), an integer
            >= 1, or 0 (torch's current setting).

    Raises:
        ValueError: an unknown ``draft``, a draft model with another vocabulary or a shorter context,
            ``draft_tokens`` or ``ngram_max`` < 1, ``threads`` neither ``"auto"`` nor an integer >= 0.
    """

    def __init__(
        self,
        model: Decoder,
        tokenizer: Tokenizer | None = None,
        weights: str = "exact",
        draft: str | Decoder | None = None,
        draft_tokens: int = 4,
        ngram_max: int = 3,
        draft_gate: bool = True,
        threads: int | str = "auto",
    ):
        if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise ValueError(f"threads: expected 'auto' or an integer >= 0, got {threads!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.weights = DecodeWeights(model, weights)
        self.block_size = model.config.block_size
        check_draft(model, draft, draft_tokens, ngram_max)
        self.draft, self.draft_tokens, self.ngram_max = draft, draft_tokens, ngram_max
        self.draft_gate = draft_gate
        self.threads = threads
        self._chosen: dict[tuple[int, int], int] = {}  # (thread budget, batch bucket) -> measured choice
        self.stats = DecodeStats()  # of the latest call (reset when a call starts)
        self._governor = ThreadGovernor(1, 1)  # the running call's (``probe.ThreadGovernor``)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """Generate for every prompt (token ids); returns one ``Completion`` per prompt, in order."""
        out = [Completion(prompt_tokens=min(len(p), self.block_size - 1)) for p in prompts]
        for event in self.stream(prompts, params):
            c = out[event.row]
            if event.token is not None:
                c.ids.append(event.token)
                if event.logprob is not None:
                    c.logprobs.append(event.logprob)
            c.text += event.text
            if event.finish_reason:
                c.finish_reason = event.finish_reason
        return out

    def stream(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> Iterator[Event]:
        """Yield ``Event``\\ s as tokens are generated (arguments are checked at call time).

        Raises:
            ValueError: an empty prompt list or prompt, an id outside the vocabulary, bad ``params``,
                or stop strings without a tokenizer.
        """
        params.validate()
        rows = [[int(t) for t in p] for p in prompts]
        if not rows or any(not r for r in rows):
            raise ValueError("prompts: need at least one prompt, each with at least one token (e.g. <|bos|>)")
        vocab = self.model.config.vocab_size
        bad = [t for r in rows for t in r if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompts: token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop: stop strings need the engine to have a tokenizer")
        return self._run([r[-(self.block_size - 1) :] for r in rows], params)

    def _run(self, rows: list[list[int]], params: SamplingParams) -> Iterator[Event]:
        model = self.model
        was_training = model.training
        draft = self.draft if isinstance(self.draft, Decoder) else None
        draft_training = draft is not None and draft.training
        model.eval()
        if draft is not None:
            draft.eval()
        self.stats = DecodeStats()
        before = torch.get_num_threads()
        try:
            self.stats.threads = self._threads(len(rows))
            torch.set_num_threads(self.stats.threads)
            # a seeded call keeps its count: a count's matmuls round differently, and a seed reproduces
            self._governor = ThreadGovernor(
                self.stats.threads, before, enabled=self.threads == "auto" and params.seed is None
            )
            batch = self._batch(rows, params)
            if max(batch.budget) == 0:
                for i in range(len(rows)):
                    yield Event(i, None, "", "length")
            elif self.draft is not None and params.repetition_penalty == 1.0:
                yield from speculative_loop(self, rows, params, batch)
            else:
                yield from self._loop(rows, params, batch)
        finally:
            self.stats.thread_switches = self._governor.switches
            if self._governor.switches:  # the count the call ended on: the latest evidence
                self._chosen[(before, batch_bucket(len(rows)))] = self._governor.current
            torch.set_num_threads(before)
            model.train(was_training)
            if draft is not None:
                draft.train(draft_training)

    def _threads(self, batch: int) -> int:
        """The thread count of a call decoding ``batch`` rows (``threads``; ``"auto"`` measured once per
        thread budget and batch bucket, then remembered by the engine)."""
        if self.threads != "auto":
            return self.threads or torch.get_num_threads()
        key = (torch.get_num_threads(), batch_bucket(batch))
        if key not in self._chosen:
            self._chosen[key] = choose_threads(self.model, self.weights, batch)[0]
        return self._chosen[key]

    def _batch(self, rows: list[list[int]], params: SamplingParams) -> Batch:
        """``rows`` (already cut to ``block_size - 1``) as a left-padded ``Batch``."""
        device = self.model.tok_emb.weight.device
        lengths = [len(r) for r in rows]
        width = max(lengths)
        gens = None
        if params.seed is not None:
            gens = [torch.Generator(device=device).manual_seed(params.seed + i) for i in range(len(rows))]
        return Batch(
            lengths=lengths,
            budget=[min(params.max_new_tokens, self.block_size - n) for n in lengths],
            pad=torch.tensor([width - n for n in lengths], device=device),
            idx=torch.tensor([[0] * (width - n) + r for r, n in zip(rows, lengths)], device=device),
            gens=gens,
        )

    def _loop(self, rows: list[list[int]], params: SamplingParams, batch: Batch) -> Iterator[Event]:
        B = len(rows)
        device = self.model.tok_emb.weight.device
        lengths, budget, idx, gens = batch.lengths, batch.budget, batch.idx, batch.gens
        cache = self.model.new_kv_cache(B, idx.shape[1] + max(budget), pad=batch.pad)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.model.config.vocab_size, dtype=torch.bool, device=device)
            for i, r in enumerate(rows):
                seen[i, r] = True
        out = RowOutput(self.tokenizer, params, budget)
        done = out.done
        alive = list(range(B))  # the prompt index of each cache row
        steps = 0  # decode steps so far: every row still in the batch has been fed this many tokens
        weights = self.weights.refresh()
        logits = self.model(idx, cache, weights=weights, last_only=True)[:, -1]  # [b, V], b = len(alive)
        while True:
            tokens = pick(logits, params, gens, seen)  # [b]
            lps = [None] * len(alive)
            if params.logprobs:
                lps = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None])[:, 0].tolist()
            for j, token in enumerate(tokens.tolist()):
                i = alive[j]
                if not done[i]:
                    yield out.emit(i, token, lps[j])
            self.stats.tokens = out.emitted
            if all(done):
                return
            steps += 1
            self.stats.passes += 1
            if seen is not None:
                seen[torch.arange(len(alive), device=device), tokens] = True
            keep = [j for j, i in enumerate(alive) if not done[i]]
            # a finished row that stayed in the batch must not be fed past the context: drop it then too
            # (by decode steps, not its own tokens: a row stopped by a stop token is fed on regardless)
            at_limit = any(done[i] and lengths[i] + steps + 1 > self.block_size for i in alive)
            if len(keep) <= COMPACT_AT * len(alive) or at_limit:  # drop finished rows from batch and cache
                rows_kept = torch.tensor(keep, device=device)
                select_rows(cache, rows_kept)
                tokens = tokens[rows_kept]
                seen = None if seen is None else seen[rows_kept]
                gens = None if gens is None else [gens[j] for j in keep]
                alive = [alive[j] for j in keep]
            threads = self._governor.before()
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            t0 = time.perf_counter()
            logits = self.model(tokens[:, None], cache, weights=weights)[:, -1]
            self._governor.after(time.perf_counter() - t0)
