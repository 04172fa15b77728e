"""The ranking page of ``lmforge align collect``: people rank sampled replies in a browser.

``create_ranking_app(store, api_key=KEY)`` is a small FastAPI app over a ``RankingStore`` (the items to
rank and the JSONL file their rankings go to), built from the server's HTTP pieces (``serve.http``:
errors, API-key auth, body limit, page and static files):

- ``GET /`` the page (``static/rank.html``, ``rank.js``, ``rank.css``; no build step, nothing from a
  CDN): the prompt, its replies in a shuffled order, drag (or ▲/▼, or type a number) to rank them,
  optional 1–5 scores for accuracy / relevance / coherence per reply, a free-text note, an annotator id;
- ``GET /api/items``: every item with its number of rankings;
- ``GET /api/next?annotator=ID[&skip=a,b]``: the least-ranked item ``ID`` has not ranked (``null``
  when none is left);
- ``POST /api/rankings`` ``{"item", "annotator", "ranks": {reply id: 1..K}, "criteria"?, "note"?}``:
  validated by ``data.preferences.ranking_record`` and appended by ``append_record`` (one fsynced
  write under a lock) *before* the reply, so closing the page never loses a submitted ranking. Errors
  are the server's ``{"error": {"message", "type", "param", "code"}}``: 400 (not JSON, not an object),
  404 (unknown item or route), 409 (this annotator has ranked the item already), 413 (a body over
  ``MAX_BODY`` bytes), 422 (missing, duplicate or out-of-range ranks, unknown reply ids, bad criteria,
  no annotator). Nothing is written for a rejected submission.

Access: with ``api_key`` set, every ``/api/*`` call needs ``Authorization: Bearer KEY`` (``ApiKeyAuth``,
as ``lmforge serve`` guards ``/v1/*``), else 401 with the same error JSON; the page and its static
files stay open so a browser can load it. The page takes the key from ``?key=`` in its link (then
drops it from the address bar) or asks for it after a 401, keeps it in ``sessionStorage`` (this tab
only) and sends it on every call.

Several people can rank at once: requests are served on a thread pool and one lock covers check,
append and bookkeeping. Each stored record is the full-ranking schema ``read_preferences`` reads plus
``item``, ``annotator``, ``criteria``, ``note``, ``time`` and the store's ``meta`` (e.g. the model).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from lmforge.serve.http import ApiError, ApiKeyAuth, BodyLimit, add_error_handlers, add_page

logger = logging.getLogger(__name__)

MAX_NOTE = 4000
MAX_BODY = 1 << 16  # bytes of one submission


@dataclass(frozen=True)
class RankItem:
    """One prompt and the replies to rank (reply id → text)."""

    id: str
    prompt: list[dict[str, str]]
    responses: dict[str, str]

    def public(self) -> dict[str, Any]:
        """The item as the page sees it."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "responses": [{"id": k, "text": v} for k, v in self.responses.items()],
        }


class RankingStore:
    """The items, the JSONL store and who has ranked what (read back from the store at start).

    Args:
        items: what people rank; ids must be unique.
        path: the JSONL store (created when missing; existing records are kept and counted).
        meta: extra fields written into every record.
        limit: call ``on_limit`` (once) when the store reaches this many rankings (0 = never);
            submissions still in flight are stored after it.
        on_limit: e.g. tell the server to finish.
    """

    def __init__(
        self,
        items: list[RankItem],
        path: Path,
        *,
        meta: dict[str, Any] | None = None,
        limit: int = 0,
        on_limit: Callable[[], None] | None = None,
    ):
        self.items = {i.id: i for i in items}
        if len(self.items) != len(items):
            raise ValueError("item ids must be unique")
        self.path = Path(path)
        self.meta = dict(meta or {})
        self.limit = limit
        self.on_limit = on_limit or (lambda: None)
        self.lock = threading.Lock()
        self.ranked: dict[str, set[str]] = {i: set() for i in self.items}
        self.count = 0
        self.session = 0
        self.finished = False  # on_limit has been called (once)
        self.path.touch()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a crash; read_preferences reports it
            if isinstance(rec, dict):
                self.count += 1
                self.ranked.setdefault(str(rec.get("item")), set()).add(str(rec.get("annotator")))

    def annotators(self) -> int:
        """Distinct annotator ids in the store."""
        return len(set().union(*self.ranked.values())) if self.ranked else 0

    def next_item(self, annotator: str, skip: set[str]) -> RankItem | None:
        """The item with the fewest rankings that ``annotator`` has not ranked or skipped."""
        with self.lock:
            left = [i for i in self.items if annotator not in self.ranked[i] and i not in skip]
            return self.items[min(left, key=lambda i: len(self.ranked[i]))] if left else None

    def submit(self, body: Any) -> dict[str, Any]:
        """Validate and store one submission; returns ``{"stored", "count", "done"}``.

        Raises:
            SubmissionError: the submission is invalid (nothing is written).
        """
        from lmforge.data.preferences import append_record, ranking_record

        if not isinstance(body, dict):
            raise ApiError(400, "expected a JSON object {item, annotator, ranks, criteria?, note?}")
        item = self.items.get(str(body.get("item")))
        if item is None:
            raise ApiError(404, f"unknown item {body.get('item')!r}", param="item", type="not_found_error")
        ranks, criteria, note = body.get("ranks"), body.get("criteria") or {}, body.get("note") or ""
        annotator = body.get("annotator")
        if not isinstance(ranks, dict):
            raise ApiError(422, "ranks: expected {reply id: rank}, 1 = best", param="ranks")
        if not isinstance(criteria, dict) or not all(isinstance(v, dict) for v in criteria.values()):
            raise ApiError(
                422, "criteria: expected {reply id: {accuracy|relevance|coherence: 1..5}}", param="criteria"
            )
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise ApiError(422, f"note: expected text of at most {MAX_NOTE} characters", param="note")
        if not isinstance(annotator, str):
            raise ApiError(422, "annotator: a non-empty annotator id is required", param="annotator")
        criteria = {k: v for k, v in criteria.items() if v}  # replies left unscored
        try:
            record = ranking_record(
                item.prompt, item.responses, ranks, annotator=annotator, criteria=criteria, note=note
            )
        except ValueError as exc:
            raise ApiError(422, str(exc), param=str(exc).split(":")[0].split("[")[0] or None) from None
        record = {"item": item.id, **record, **self.meta, "time": _now()}
        with self.lock:
            if record["annotator"] in self.ranked[item.id]:
                raise ApiError(409, f"{record['annotator']!r} has already ranked item {item.id}")
            append_record(self.path, record)
            self.ranked[item.id].add(record["annotator"])
            self.count += 1
            self.session += 1
            done = bool(self.limit) and self.count >= self.limit
            first = done and not self.finished
            self.finished = self.finished or done
        logger.info("ranking %d stored (item %s, annotator %s)", self.count, item.id, record["annotator"])
        if first:
            self.on_limit()
        return {"stored": True, "count": self.count, "done": done}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_ranking_app(
    store: RankingStore, *, title: str = "lmforge: rank replies", api_key: str = ""
) -> FastAPI:
    """The FastAPI app of the ranking page over ``store`` (routes: module docstring); a non-empty
    ``api_key`` is required on ``/api/*``."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)
    app.add_middleware(ApiKeyAuth, key=api_key, protect=("/api/",))  # outermost: 401 before the body is read
    add_page(app, "/", "rank.html")

    @app.get("/api/items")
    def items() -> dict[str, Any]:
        with store.lock:
            counts = {i: len(a) for i, a in store.ranked.items()}
        return {
            "title": title,
            "items": [{**i.public(), "rankings": counts[i.id]} for i in store.items.values()],
            "count": store.count,
        }

    @app.get("/api/next")
    def next_item(annotator: str = "", skip: str = "") -> dict[str, Any]:
        found = store.next_item(annotator.strip(), set(filter(None, skip.split(","))))
        return {
            "title": title,
            "item": found.public() if found else None,
            "count": store.count,
            "total": len(store.items),
        }

    @app.post("/api/rankings")
    async def submit(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "the body is not valid JSON") from None
        # the append fsyncs: run it off the event loop so other annotators are not blocked
        return await run_in_threadpool(store.submit, body)

    return app
