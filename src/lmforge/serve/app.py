"""The OpenAI-compatible API server: ``create_app(model, settings)`` → a FastAPI app (docs/serve.md).

Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (both streamable as server-sent events ending ``data: [DONE]``),
``POST /v1/embeddings``, the chat page at ``/`` (``static/chat.html``) and ``/openapi.json`` (request
bodies and the error responses documented).

Generation goes through one ``inference.scheduler.Scheduler`` per app: it owns the model on its own
thread and batches every running request step by step; a handler submits its prompts and reads the
tokens from an asyncio queue filled from the scheduler thread (``bridge.py``: one
``loop.call_soon_threadsafe`` per batch of tokens). A client that disconnects cancels its rows
(streaming: when the response is torn down; non-streaming: the handler polls for the disconnect). Embeddings run on the same thread between steps. Chat prompts are rendered
by ``tokenizer.chat.chat_prompt`` (the chat template; the oldest turns are dropped to fit, as in
``lmforge chat``). Limits (``ServeSettings``) are checked before anything is queued. CPU work that grows
with the request (tokenizing prompts, fitting a conversation, up to a whole 1 MB body) runs on the
threadpool, never on the event loop, so one large request cannot stall ``/health`` or the streams of
others; chat and embeddings encode with a private copy of the tokenizer whose ``encode_special_tokens``
stays on (content is data), so no thread writes a tokenizer another one is reading.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from tokenizers import Tokenizer

from lmforge.inference.rows import SamplingParams, default_stop_ids
from lmforge.inference.scheduler import Scheduler, Token
from lmforge.runstore import TOKENIZER_FILE
from lmforge.serve import schemas as S
from lmforge.serve.bridge import Dispatch, EventStream, Generation, collect
from lmforge.serve.http import (
    ApiError,
    ApiKeyAuth,
    BodyLimit,
    add_error_handlers,
    add_page,
    error_responses,
    json_body,
    read_json,
)
from lmforge.tokenizer.chat import chat_prompt
from lmforge.tokenizer.texts import encode_texts, pad_batch

log = logging.getLogger(__name__)


SSE_EVENT = {  # one server-sent event of a stream, as OpenAPI tools read it
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a JSON chunk, an error object, or [DONE]"}},
}


@dataclass
class ServeSettings:
    """Server limits and auth (``lmforge serve`` options of the same names)."""

    api_key: str = ""  # '' = no auth
    name: str = ""  # the model id clients send ('' = the checkpoint directory's name)
    max_prompt_tokens: int = 0  # 0 = the model's context - 1
    max_tokens: int = 512  # per choice
    max_n: int = 8  # choices per request (prompts x n for a list of prompts)
    max_inputs: int = 64  # embedding inputs per request
    max_messages: int = 2048  # chat messages per request (OpenAI's limit)
    max_body_bytes: int = 1_000_000
    max_concurrent: int = 64  # requests in flight; more → 429
    max_batch: int = 32  # rows generating at once in the scheduler; more wait
    threads: int = 0  # torch threads of the model thread (0 = torch's default)


@dataclass
class ServedModel:
    """A loaded checkpoint: the model, its tokenizer, the id it is served as and its embedding pooling."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    name: str
    pooling: str = "mean"
    created: int = 0

    @property
    def arch(self) -> str:
        return self.model.config.arch


def load_served_model(path: str | Path, which: str = "best", device: str = "cpu") -> ServedModel:
    """Open a checkpoint or training stage directory (``which`` checkpoint of a stage)."""
    from lmforge.model.checkpoint import load_model, read_meta, resolve_checkpoint
    from lmforge.tokenizer.train import load_tokenizer

    ckpt = resolve_checkpoint(Path(path).expanduser(), which)
    model, _ = load_model(ckpt, device=device)
    pooling = read_meta(ckpt).get("pooling", "mean")
    stage = ckpt.parent.parent if ckpt.parent.name == "ckpt" else ckpt
    return ServedModel(
        model.eval(), load_tokenizer(ckpt / TOKENIZER_FILE), stage.name, pooling, int(ckpt.stat().st_mtime)
    )


KERNEL_CACHE_ENTRIES = 8
KERNEL_CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Cap oneDNN's primitive cache and ideep's LRU of packed-linear kernels at ``entries`` each (unless
    the variables are already set), before the process creates its first kernel (they are read then).

    Both default to 1,024 entries keyed by input shape; a server's batches change shape with every
    admission, so the caches filled for the first few thousand requests and the resident set rose with
    them (+290 MB over 30 rounds of 64 requests, still rising; bench/serve_memory.py). At 8 entries it
    stays flat, and tokens/s at 32 clients did not change measurably (bench/serve_load.py; docs/serve.md).
    """
    import os

    for var in KERNEL_CACHE_VARS:
        os.environ.setdefault(var, str(entries))


def create_app(model: str | Path | ServedModel, settings: ServeSettings | None = None) -> FastAPI:
    """The API app for ``model`` (a checkpoint path or a ``ServedModel``); the scheduler thread starts
    with the app's lifespan (or at the first request when the lifespan is not run, e.g. ASGI tests) and
    stops with it (``app.state.scheduler.stop()``)."""
    settings = settings or ServeSettings()
    bound_kernel_caches()
    served = model if isinstance(model, ServedModel) else load_served_model(model)
    if settings.name:
        served.name = settings.name
    scheduler = Scheduler(
        served.model, served.tokenizer, max_batch=settings.max_batch, threads=settings.threads
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler, app.state.served, app.state.settings = scheduler, served, settings
    app.state.in_flight = 0
    add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyAuth, key=settings.api_key)
    add_page(app, "/", "chat.html")
    api = _Api(served, settings, scheduler, app)

    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"], responses=error_responses(401))
    model_id = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
    app.add_api_route(
        "/v1/models/{model_id:path}",
        api.model,
        methods=["GET"],
        responses=error_responses(401, 404),
        openapi_extra={"parameters": [model_id]},
    )
    post = error_responses(400, 401, 404, 413, 415, 429, 500)
    for path, handler, body, out in (
        ("/v1/completions", api.completions, S.CompletionRequest, S.Completion),
        ("/v1/chat/completions", api.chat, S.ChatRequest, S.ChatCompletion),
        ("/v1/embeddings", api.embeddings, S.EmbeddingRequest, S.EmbeddingList),
    ):
        ok: dict[str, Any] = {"model": out, "description": "the result"}
        if out is not S.EmbeddingList:
            ok["description"] += " (with stream: server-sent events ending 'data: [DONE]')"
            ok["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
        app.add_api_route(
            path, handler, methods=["POST"], openapi_extra=json_body(body), responses={200: ok, **post}
        )
    return app


class _Api:
    """The endpoint handlers of one app."""

    def __init__(self, served: ServedModel, settings: ServeSettings, scheduler: Scheduler, app: FastAPI):
        self.served, self.settings, self.scheduler, self.app = served, settings, scheduler, app
        self.tok = served.tokenizer
        self.text_tok = Tokenizer.from_str(served.tokenizer.to_str())  # chat and embeddings: content is data
        self.text_tok.encode_special_tokens = True
        self.block_size = served.model.config.block_size
        self.vocab = served.model.config.vocab_size
        self.max_prompt = min(settings.max_prompt_tokens or self.block_size - 1, self.block_size - 1)
        if settings.max_prompt_tokens > self.block_size - 1:
            log.warning(
                "max_prompt_tokens %d is over the model's context (%d tokens): prompts are limited to %d",
                settings.max_prompt_tokens,
                self.block_size,
                self.max_prompt,
            )
        self.stop_ids = default_stop_ids(self.tok)
        self.bos = self.tok.token_to_id("<|bos|>")
        self.dispatch: Dispatch | None = None

    # -- plain endpoints ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        s = self.scheduler
        return {
            "status": "ok",
            "model": self.served.name,
            "arch": self.served.arch,
            "context_length": self.block_size,
            "in_flight": self.app.state.in_flight,
            "running_rows": sum(not r.done for r in list(s.rows)),
            "stats": dict(s.stats),
        }

    async def models(self) -> dict[str, Any]:
        return S.ModelList(data=[self._card()]).model_dump()

    async def model(self, request: Request) -> dict[str, Any]:
        self._check_model(request.path_params["model_id"])
        return self._card().model_dump()

    def _card(self) -> S.ModelCard:
        return S.ModelCard(id=self.served.name, created=self.served.created)

    # -- generation ---------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Any:
        req = await read_json(request, S.CompletionRequest)
        self._check_model(req.model)
        prompts = await run_in_threadpool(lambda: [self._ids(p, "prompt") for p in req.prompt])
        params = self._params(req, req.max_tokens, req.logprobs is not None, req.stop)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        top = req.logprobs or 0

        def chunk(i: int, ev: Token) -> str:
            lp = (
                self._completion_logprobs([ev], top)
                if req.logprobs is not None and ev.token is not None
                else None
            )
            choice = S.CompletionChoice(index=i, text=ev.text, finish_reason=_reason(ev), logprobs=lp)
            return S.Completion(
                id=rid, created=created, model=self.served.name, choices=[choice]
            ).model_dump_json()

        def whole(by_choice: dict[int, list[Token]], usage: S.Usage) -> dict:
            choices = [
                S.CompletionChoice(
                    index=i,
                    text="".join(e.text for e in evs),
                    finish_reason=_reason(evs[-1]),
                    logprobs=self._completion_logprobs(evs, top) if req.logprobs is not None else None,
                )
                for i, evs in sorted(by_choice.items())
            ]
            return S.Completion(
                id=rid, created=created, model=self.served.name, choices=choices, usage=usage
            ).model_dump()

        def usage_chunk(usage: S.Usage) -> str:
            return S.Completion(
                id=rid, created=created, model=self.served.name, choices=[], usage=usage
            ).model_dump_json()

        return await self._generate(request, req, prompts, params, top, chunk, whole, usage_chunk, None)

    async def chat(self, request: Request) -> Any:
        req = await read_json(request, S.ChatRequest)
        self._check_model(req.model)
        self._need_decoder()
        if len(req.messages) > self.settings.max_messages:
            raise ApiError(
                400,
                f"messages: {len(req.messages)} messages; the limit is {self.settings.max_messages}",
                param="messages",
            )
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        # the oldest turns are dropped to leave room for the reply; the error limit is max_prompt, as for
        # completions (a reply that outgrows the context ends with finish_reason "length")
        budget = max(1, min(self.max_prompt, self.block_size - 1 - (max_tokens or 0)))
        try:
            ids, _ = await run_in_threadpool(chat_prompt, self.text_tok, messages, budget)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        self._check_length(ids, "messages")
        top = req.top_logprobs or 0
        params = self._params(req, max_tokens, req.logprobs, req.stop)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def wrap(choices: list[S.ChunkChoice], usage: S.Usage | None = None) -> str:
            c = S.ChatChunk(id=rid, created=created, model=self.served.name, choices=choices, usage=usage)
            return c.model_dump_json(exclude_none=True)

        def first(i: int) -> str:
            return wrap([S.ChunkChoice(index=i, delta=S.Delta(role="assistant", content=""))])

        def chunk(i: int, ev: Token) -> str:
            lp = self._chat_logprobs([ev], top) if req.logprobs and ev.token is not None else None
            delta = S.Delta(content=ev.text or None)
            return wrap([S.ChunkChoice(index=i, delta=delta, finish_reason=_reason(ev), logprobs=lp)])

        def whole(by_choice: dict[int, list[Token]], usage: S.Usage) -> dict:
            choices = [
                S.ChatChoice(
                    index=i,
                    message=S.ChatMessageOut(content="".join(e.text for e in evs)),
                    finish_reason=_reason(evs[-1]),
                    logprobs=self._chat_logprobs(evs, top) if req.logprobs else None,
                )
                for i, evs in sorted(by_choice.items())
            ]
            body = S.ChatCompletion(
                id=rid, created=created, model=self.served.name, choices=choices, usage=usage
            )
            return body.model_dump()

        return await self._generate(
            request, req, [ids], params, top, chunk, whole, lambda u: wrap([], u), first
        )

    async def _generate(
        self,
        request: Request,
        req: S.Sampling,
        prompts: list[list[int]],
        params: SamplingParams,
        top: int,
        chunk: Callable[[int, Token], str],
        whole: Callable[[dict[int, list[Token]], S.Usage], dict],
        usage_chunk: Callable[[S.Usage], str],
        first: Callable[[int], str] | None,
    ) -> Any:
        self._need_decoder()
        rows = len(prompts) * req.n
        if rows > self.settings.max_n:
            what = f"{len(prompts)} prompts x n={req.n}" if len(prompts) > 1 else f"n={req.n}"
            raise ApiError(400, f"n: {what} = {rows} choices; the limit is {self.settings.max_n}", param="n")
        gen = self._start(prompts, params, req.n, top)
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def events() -> AsyncIterator[str]:
                completion_tokens = 0
                if first is not None:
                    for i in range(rows):
                        yield f"data: {first(i)}\n\n"
                async for i, ev in gen.events():
                    completion_tokens += ev.token is not None
                    if ev.finish_reason == "error":
                        err = {
                            "error": {
                                "message": ev.error,
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                        yield f"data: {json.dumps(err)}\n\n"
                    elif ev.text or ev.finish_reason or ev.logprob is not None:
                        yield f"data: {chunk(i, ev)}\n\n"
                if include_usage:
                    usage = S.Usage(
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens,
                    )
                    yield f"data: {usage_chunk(usage)}\n\n"
                yield "data: [DONE]\n\n"

            return EventStream(events(), gen.close)
        try:
            by_choice = await collect(request, gen)
        finally:
            gen.close()
        errors = [evs[-1].error for evs in by_choice.values() if evs and evs[-1].finish_reason == "error"]
        if errors:
            raise ApiError(500, f"generation failed: {errors[0]}", type="server_error")
        completion_tokens = sum(e.token is not None for evs in by_choice.values() for e in evs)
        usage = S.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return JSONResponse(whole(by_choice, usage))

    def _start(self, prompts: list[list[int]], params: SamplingParams, n: int, top: int) -> Generation:
        state = self.app.state
        if state.in_flight >= self.settings.max_concurrent:
            raise ApiError(
                429,
                f"too many requests in flight (limit {self.settings.max_concurrent}); retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            )
        self.scheduler.start()
        state.in_flight += 1
        loop = asyncio.get_running_loop()
        if self.dispatch is None or self.dispatch.loop is not loop:
            self.dispatch = Dispatch(loop)
        gen = Generation(
            self.scheduler, n, lambda: setattr(state, "in_flight", state.in_flight - 1), self.dispatch
        )
        try:
            for i, p in enumerate(prompts):
                gen.submit(i, p, params, top)
        except ValueError as e:
            gen.close()
            raise ApiError(400, str(e)) from None
        return gen

    def _params(
        self, req: S.Sampling, max_tokens: int | None, logprobs: bool, stop: list[str]
    ) -> SamplingParams:
        limit = self.settings.max_tokens
        if max_tokens is not None and max_tokens > limit:
            raise ApiError(
                400, f"max_tokens: {max_tokens} is over this server's limit of {limit}", param="max_tokens"
            )
        return SamplingParams(
            max_new_tokens=limit if max_tokens is None else max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p if req.top_p < 1 else None,
            min_p=req.min_p or None,
            seed=req.seed,
            stop=stop,
            stop_ids=self.stop_ids,
            logprobs=logprobs,
        )

    def _ids(self, prompt: str | list[int], field: str) -> list[int]:
        """Token ids of one prompt: text is encoded after ``<|bos|>``; ids are checked against the vocabulary."""
        if isinstance(prompt, str):
            ids = ([self.bos] if self.bos is not None else []) + self.tok.encode(
                prompt, add_special_tokens=False
            ).ids
        else:
            bad = [t for t in prompt if not 0 <= t < self.vocab]
            if bad:
                raise ApiError(
                    400,
                    f"{field}: token id {bad[0]} is outside the vocabulary [0, {self.vocab})",
                    param=field,
                )
            ids = prompt
        self._check_length(ids, field)
        return ids

    def _check_length(self, ids: list[int], field: str) -> None:
        """400 ``context_length_exceeded`` when ``ids`` is over the prompt limit (one message for every endpoint)."""
        if len(ids) > self.max_prompt:
            raise ApiError(
                400,
                f"{field}: {len(ids)} prompt tokens; the limit is {self.max_prompt} "
                f"(max_prompt_tokens; the model's context is {self.block_size} tokens)",
                param=field,
                code="context_length_exceeded",
            )

    def _check_model(self, name: str) -> None:
        if name != self.served.name:
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {self.served.name!r}",
                param="model",
                type="not_found_error",
                code="model_not_found",
            )

    def _need_decoder(self) -> None:
        if self.served.arch != "decoder":
            raise ApiError(
                400, f"model {self.served.name!r} is an {self.served.arch}: it serves /v1/embeddings only"
            )

    def _piece(self, token: int) -> str:
        return self.tok.decode([token], skip_special_tokens=False)

    def _completion_logprobs(self, events: list[Token], top: int) -> dict[str, Any]:
        evs = [e for e in events if e.token is not None]
        tokens = [self._piece(e.token) for e in evs]
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in evs],
            "top_logprobs": [{self._piece(t): lp for t, lp in e.top_logprobs} for e in evs] if top else None,
            "text_offset": offsets,
        }

    def _chat_logprobs(self, events: list[Token], top: int) -> dict[str, Any]:
        def entry(token: int, lp: float) -> dict[str, Any]:
            piece = self._piece(token)
            return {"token": piece, "logprob": lp, "bytes": list(piece.encode())}

        content = []
        for e in events:
            if e.token is not None:
                content.append(
                    {**entry(e.token, e.logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs]}
                )
        return {"content": content}

    # -- embeddings ---------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Any:
        from lmforge.model.heads import embed_batch

        req = await read_json(request, S.EmbeddingRequest)
        self._check_model(req.model)
        if len(req.input) > self.settings.max_inputs:
            raise ApiError(
                400, f"input: {len(req.input)} inputs; the limit is {self.settings.max_inputs}", param="input"
            )
        cfg = self.served.model.config
        if isinstance(req.input[0], str):
            seqs = await run_in_threadpool(encode_texts, self.text_tok, req.input, cfg.arch, self.block_size)
        else:
            seqs = [self._ids(x, "input") for x in req.input]
        pad_id = self.tok.token_to_id("<|pad|>") or 0
        model, pooling = self.served.model, self.served.pooling

        @torch.no_grad()
        def run() -> torch.Tensor:
            out = []
            for start in range(0, len(seqs), 16):
                idx, mask = pad_batch(seqs[start : start + 16], pad_id)
                device = next(model.parameters()).device
                out.append(embed_batch(model, idx.to(device), mask.to(device), pooling).cpu())
            return torch.cat(out)

        if self.app.state.in_flight >= self.settings.max_concurrent:
            raise ApiError(
                429,
                f"too many requests in flight (limit {self.settings.max_concurrent})",
                type="rate_limit_error",
            )
        self.scheduler.start()
        self.app.state.in_flight += 1
        try:
            vectors = await asyncio.wrap_future(self.scheduler.run(run))
        finally:
            self.app.state.in_flight -= 1
        data = []
        for i, v in enumerate(vectors):
            if req.encoding_format == "base64":
                value: list[float] | str = base64.b64encode(v.numpy().astype("<f4").tobytes()).decode()
            else:
                value = v.tolist()
            data.append(S.Embedding(index=i, embedding=value))
        n_tokens = sum(len(s) for s in seqs)
        usage = S.Usage(prompt_tokens=n_tokens, total_tokens=n_tokens)
        return S.EmbeddingList(data=data, model=self.served.name, usage=usage).model_dump()


def _reason(ev: Token) -> str | None:
    """The OpenAI finish reason of an event (``cancelled`` rows report ``stop``)."""
    if ev.finish_reason in (None, "stop", "length"):
        return ev.finish_reason
    return "stop"
