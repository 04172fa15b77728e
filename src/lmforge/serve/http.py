"""HTTP plumbing shared by the pages lmforge serves (the API server's app.py, alignment's ranking page):
OpenAI-style errors, API-key auth, a request-body size limit, strict JSON bodies, static pages, and a
uvicorn server on a thread (tests, the load bench).

- Errors are ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status. ``ApiError`` is
  raised by handlers; ``add_error_handlers`` also turns unknown routes (404), wrong methods (405) and any
  unexpected exception (500, logged) into that shape, so no request can take the process down.
- ``ApiKeyAuth``: when a key is set, paths under the protected prefixes need
  ``Authorization: Bearer KEY`` (compared in constant time) → 401 otherwise. Pages and ``/health`` stay
  open so a browser can load the page and ask for the key.
- ``BodyLimit``: a pure ASGI middleware refusing bodies over ``max_bytes`` (by ``Content-Length`` before
  reading, and by counting for chunked uploads) with 413.
- ``read_json(request, Model)``: parse the body (400 on malformed JSON, a non-object or a field error
  naming the field).
"""

from __future__ import annotations

import hmac
import json
import logging
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


def add_error_handlers(app: FastAPI) -> None:
    """Answer ``ApiError``, routing errors, validation errors and crashes as OpenAI-style JSON."""

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


async def read_json(request: Request, model: type[M]) -> M:
    """The body parsed into ``model``; ``ApiError(400)`` on malformed JSON or an invalid field."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None


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
