"""HTTP plumbing shared by the pages lmforge serves (the API server's app.py, alignment's ranking page):
OpenAI-style errors, API-key auth, a request-body size limit, strict JSON bodies, static pages, and a
uvicorn server on a thread (tests, the load bench).

- Errors are ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status. ``ApiError`` is
  raised by handlers; ``add_error_handlers`` also turns unknown routes (404), wrong methods (405) and any
  unexpected exception (500, logged) into that shape, so no request can take the process down, and a
  crash before the response started is answered without re-raising, so the keep-alive connection stays
  usable (uvicorn closes it when an exception reaches it). ``ERRORS`` documents the shape in OpenAPI.
- ``ApiKeyAuth``: when a key is set, paths under the protected prefixes need
  ``Authorization: Bearer KEY`` (compared in constant time) → 401 otherwise. Pages and ``/health`` stay
  open so a browser can load the page and ask for the key.
- ``BodyLimit``: a pure ASGI middleware refusing bodies over ``max_bytes`` (by ``Content-Length`` before
  reading, and by counting for chunked uploads) with 413.
- ``read_json(request, Model)``: parse the body: 415 unless ``Content-Type`` is JSON (a browser page
  of another site can send ``text/plain`` without a CORS preflight, never ``application/json``); 400 on
  malformed JSON (NaN and infinities are not JSON; neither is an integer past Python's 4,300-digit
  conversion limit, an error of its own), on a string holding a lone UTF-16 surrogate (``"\\ud800"``:
  not Unicode text, unencodable by the tokenizer and by the error response), on a non-object, or on a
  field error naming the field. ``json_body(Model)`` documents the body in OpenAPI.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    body = error_body(err.message, type=err.type, param=err.param, code=err.code)
    return JSONResponse(body, status_code=err.status)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


ERROR_MEANINGS = {
    400: "invalid request: malformed JSON, an unknown or invalid field, or a limit exceeded (the message names it)",
    401: "missing or wrong API key (only when the server has a key)",
    404: "unknown model id",
    413: "request body over the server's size limit",
    415: "Content-Type is not application/json",
    429: "too many requests in flight",
    500: "internal error",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses``, each in the error shape (for ``add_api_route``)."""
    return {s: {"model": ErrorBody, "description": ERROR_MEANINGS[s]} for s in statuses}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``openapi_extra`` documenting ``model`` as the required JSON body of a handler that reads it
    with ``read_json`` (its ``$defs`` inlined: the models are not recursive)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"required": True, "content": content}}


def add_error_handlers(app: FastAPI) -> None:
    """Answer ``ApiError``, routing errors, validation errors and crashes as OpenAI-style JSON."""
    app.add_middleware(CatchCrashes)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(
            ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc.errors()))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))


class CatchCrashes:
    """ASGI middleware: an exception before the response started → 500 in the error shape, logged and not
    re-raised (Starlette's handler re-raises it and uvicorn then closes the keep-alive connection)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except _TooLarge:
            raise  # BodyLimit's signal, answered 413 by it
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            err = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")
            await error_response(err)(scope, receive, send)


def validation_error(errors: Sequence[dict[str, Any]]) -> ApiError:
    """A 400 naming the first invalid field of pydantic ``errors``."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "extra_forbidden":
        message = f"{loc}: unsupported field"
    elif first.get("type") == "missing":
        message = f"{loc}: required field is missing"
    else:
        message = f"{loc}: {first.get('msg', 'invalid value')}".removeprefix(": ")
        message = message.replace("Value error, ", "")
    return ApiError(400, message, param=loc or None)


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate


async def read_json(request: Request, model: type[M]) -> M:
    """The body parsed into ``model``; ``ApiError`` 415 for a non-JSON ``Content-Type``, 400 on malformed
    JSON, a lone surrogate or an invalid field (module docstring)."""
    ctype = request.headers.get("content-type", "")
    mime = ctype.split(";", 1)[0].strip().lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        raise ApiError(
            415,
            f"Content-Type must be application/json, got {ctype[:100]!r}",
            code="unsupported_media_type",
        )
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digits past sys.get_int_max_str_digits
        raise ApiError(400, f"the body is not valid JSON: {str(e).split('; use ')[0]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    if SURROGATE_ESCAPE.search(raw):
        where = lone_surrogate(data)
        if where is not None:
            raise ApiError(
                400,
                f"{where or 'body'}: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff unpaired); "
                "send valid Unicode text",
                param=where or None,
            )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def lone_surrogate(data: Any) -> str | None:
    """The dotted path of the first string (or key) in ``data`` holding an unpaired surrogate, else None."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and not _encodable(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                at = f"{path}.{key}" if path else str(key)
                if not _encodable(key):
                    return path
                stack.append((at, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ApiKeyAuth:
    """ASGI middleware: paths starting with ``protect`` need ``Authorization: Bearer key`` → 401 otherwise
    (compared in constant time; every path is open when ``key`` is empty)."""

    def __init__(self, app: ASGIApp, key: str, protect: Sequence[str] = ("/v1/",)):
        self.app, self.protect = app, tuple(protect)
        self.expected = f"Bearer {key}".encode() if key else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected and scope["type"] == "http" and scope["path"].startswith(self.protect):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "missing or wrong API key: send the header 'Authorization: Bearer YOUR_KEY'"
                err = ApiError(401, message, type="authentication_error", code="invalid_api_key")
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` → 413 (module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        err = ApiError(413, f"request body too large (limit {self.max_bytes} bytes)", code="body_too_large")
        response = error_response(err)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class _TooLarge(Exception):
    pass


def add_page(app: FastAPI, route: str, page: str, directory: Path = STATIC_DIR) -> None:
    """Serve ``directory/page`` at ``route`` and the directory's files under ``/static`` (once)."""

    async def _page() -> FileResponse:
        return FileResponse(directory / page, media_type="text/html")

    app.add_api_route(route, _page, methods=["GET"], include_in_schema=False)
    if not any(getattr(r, "path", None) == "/static" for r in app.routes):
        app.mount("/static", StaticFiles(directory=directory), name="static")


class ServerThread:
    """Run ``app`` under uvicorn on a background thread; ``port`` 0 picks a free port.

    Use as a context manager or call ``start()`` / ``stop()``; ``url`` is ``http://host:port``.
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
