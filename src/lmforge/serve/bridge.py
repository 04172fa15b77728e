"""The asyncio side of the scheduler for the API handlers: token queues, coalesced wake-ups, disconnects.

- ``Dispatch`` hands tokens from the scheduler thread to asyncio queues of one event loop; one
  ``loop.call_soon_threadsafe`` delivers everything queued since the last delivery, so a step of 32 rows
  wakes the loop once.
- ``Generation``: the scheduler requests of one HTTP request (a prompt list x n choices), the queue
  their tokens arrive on, and ``close()`` (cancel what still runs, release the concurrency slot).
- ``collect``: every token of a non-streaming request, cancelling it when the client disconnects
  (polled every 0.25 s).
- ``EventStream``: a server-sent-event response whose ``on_close`` runs however it ends (finished,
  client gone, error): that is what cancels a streaming request whose client hung up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from lmforge.inference.rows import SamplingParams
from lmforge.inference.scheduler import Scheduler, Token
from lmforge.serve.http import ApiError


class Dispatch:
    """Hands tokens from the scheduler thread to asyncio queues of one event loop, coalescing wake-ups:
    one ``call_soon_threadsafe`` delivers everything queued since the last delivery (a step of 32 rows
    wakes the loop once, not 32 times)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[tuple[asyncio.Queue, Any]] = []
        self.scheduled = False

    def put(self, queue: asyncio.Queue, item: Any) -> None:
        with self.lock:
            self.pending.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop is gone: nobody is listening
            pass

    def _deliver(self) -> None:
        with self.lock:
            items, self.pending, self.scheduled = self.pending, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Generation:
    """The scheduler requests of one HTTP request and the asyncio queue their tokens arrive on."""

    def __init__(self, scheduler: Scheduler, n: int, release: Callable[[], None], dispatch: Dispatch):
        self.scheduler, self.n, self.release, self.dispatch = scheduler, n, release, dispatch
        self.queue: asyncio.Queue[tuple[int, Token]] = asyncio.Queue()
        self.handles: list = []
        self.open = 0
        self.closed = False

    def submit(self, p: int, prompt: list[int], params: SamplingParams, top: int) -> None:
        def sink(ev: Token) -> None:
            self.dispatch.put(self.queue, (p * self.n + ev.index, ev))

        self.handles.append(self.scheduler.submit(prompt, params, sink, n=self.n, top_logprobs=top))
        self.open += self.n

    async def events(self) -> AsyncIterator[tuple[int, Token]]:
        while self.open:
            i, ev = await self.queue.get()
            if ev.finish_reason is not None:
                self.open -= 1
            yield i, ev

    def close(self) -> None:
        """Cancel whatever still runs and give the concurrency slot back (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.open:
            for h in self.handles:
                h.cancel()
        self.release()


async def collect(request: Request, gen: Generation) -> dict[int, list[Token]]:
    """Every event by choice; cancels the generation when the client disconnects meanwhile."""
    by_choice: dict[int, list[Token]] = {}

    async def consume() -> None:
        async for i, ev in gen.events():
            by_choice.setdefault(i, []).append(ev)

    task = asyncio.ensure_future(consume())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                task.result()
                return by_choice
            if await request.is_disconnected():
                gen.close()
                raise ApiError(499, "the client disconnected", type="client_closed_request")
    finally:
        task.cancel()


class EventStream(StreamingResponse):
    """Server-sent events; ``on_close`` runs however the response ends (done, client gone, error)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
