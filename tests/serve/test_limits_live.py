"""The server's limits and malformed requests under uvicorn on an ephemeral loopback port: a long chat is
fitted off the event loop while ``/health`` stays fast, too many messages are refused, malformed bodies
(lone surrogates, 5,000-digit integers, non-JSON content types) get a 4xx in the error shape on a
keep-alive connection that stays usable, ``/openapi.json`` documents bodies and errors,
``GET /v1/models/{id}`` answers like OpenAI's, and chat and completions refuse a long prompt alike."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from lmforge.serve.http import ServerThread, add_error_handlers

JSON = {"content-type": "application/json"}
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.fixture
def live(make_app):
    with ServerThread(make_app(api_key="k", max_tokens=16)) as server:
        yield server


@pytest.fixture
def http(live: ServerThread):
    with httpx.Client(base_url=live.url, headers={"Authorization": "Bearer k"}, timeout=60) as c:
        yield c


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == ERROR_KEYS, err
    return err


def local_port(r: httpx.Response) -> int:
    """The client-side port of the connection ``r`` came on (equal ports: the same keep-alive connection)."""
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_a_long_conversation_is_fitted_while_health_stays_fast(
    http: httpx.Client, live: ServerThread
) -> None:
    messages = [
        {"role": ("user", "assistant")[i % 2], "content": "the cat sat on a mat " * 4} for i in range(2047)
    ]
    body = {"model": "tiny", "messages": messages, "max_tokens": 2, "temperature": 0}
    probes: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            while not done.is_set():
                start = time.perf_counter()
                assert c.get("/health").status_code == 200
                probes.append(time.perf_counter() - start)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        start = time.perf_counter()
        r = http.post("/v1/chat/completions", json=body)
        took = time.perf_counter() - start
    finally:
        done.set()
        prober.join()
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] <= 127  # the oldest turns were dropped to fit
    assert took < 5, took  # the render-and-drop loop took 9 s for 2,000 messages
    assert probes and max(probes) < 1.0, max(probes)


def test_too_many_messages_is_a_400(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "hi"}] * 2049
    err = error_of(http.post("/v1/chat/completions", json={"model": "tiny", "messages": messages}), 400)
    assert err["param"] == "messages" and "2049 messages; the limit is 2048" in err["message"]


@pytest.mark.parametrize(
    "raw,words",
    [
        (
            rb'{"model": "tiny", "prompt": "\ud800\udc00\ud800"}',
            "prompt: a string holds a lone UTF-16 surrogate",
        ),
        (rb'{"model": "tiny", "prompt": ["ok", "\udfff"]}', "prompt.1: a string holds a lone"),
        (rb'{"model": "\ud800", "prompt": "a"}', "model: a string holds a lone"),
        (rb'{"model": "tiny", "prompt": "a", "\ud800": 1}', "body: a string holds a lone"),
        (b'{"model": "tiny", "prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}", "4300 digits"),
        (b'{"model": "tiny", "prompt": "a", "seed": -' + b"1" * 5000 + b"}", "4300 digits"),
        (b'{"model": "tiny", "prompt": "a", "top_k": Infinity}', "Infinity is not a JSON value"),
    ],
)
def test_malformed_bodies_are_4xx_and_the_connection_stays_usable(http: httpx.Client, raw, words) -> None:
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
        bad = http.post(path, content=raw, headers=JSON)
        err = error_of(bad, 400)
        assert words in err["message"] or "messages" in err["message"] or "input" in err["message"], err
        assert bad.headers.get("connection") != "close"
        ok = http.get("/v1/models")
        assert ok.status_code == 200 and local_port(ok) == local_port(bad)  # same keep-alive connection


def test_a_crash_is_a_500_in_the_error_shape_on_a_connection_that_stays_usable(caplog) -> None:
    app = FastAPI()
    add_error_handlers(app)

    async def boom() -> None:
        raise RuntimeError("bug")

    async def fine() -> dict:
        return {"ok": True}

    app.add_api_route("/boom", boom)
    app.add_api_route("/fine", fine)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as c:
        bad = c.get("/boom")
        assert error_of(bad, 500) == {
            "message": "internal error: RuntimeError",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        ok = c.get("/fine")
        assert ok.json() == {"ok": True} and local_port(ok) == local_port(bad)
    assert "unhandled error on GET /boom" in caplog.text


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_non_json_content_types_are_415(http: httpx.Client, ctype) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = http.post("/v1/completions", content=b'{"model": "tiny", "prompt": "a"}', headers=headers)
    err = error_of(r, 415)
    assert err["code"] == "unsupported_media_type" and "must be application/json" in err["message"]
    r = http.post(
        "/v1/completions",
        content=b'{"model": "tiny", "prompt": "a", "max_tokens": 1}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


def test_openapi_documents_bodies_and_error_responses(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
        op = spec["paths"][path]["post"]
        assert {"200", "400", "401", "413", "415", "429"} <= set(op["responses"]), path
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert "model" in schema["required"] and schema["additionalProperties"] is False
    error = spec["paths"]["/v1/completions"]["post"]["responses"]["400"]["content"]["application/json"]
    ref = error["schema"]["$ref"].rsplit("/", 1)[-1]
    assert spec["components"]["schemas"][ref]["required"] == ["error"]
    assert set(spec["paths"]["/v1/models/{model_id}"]["get"]["responses"]) == {"200", "401", "404"}


def test_get_model_by_id(http: httpx.Client, live: ServerThread) -> None:
    listed = http.get("/v1/models").json()["data"][0]
    assert http.get("/v1/models/tiny").json() == listed
    err = error_of(http.get("/v1/models/gpt-4"), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model" and "'gpt-4'" in err["message"]
    assert error_of(http.get("/v1/models/org/name"), 404)["code"] == "model_not_found"
    assert error_of(httpx.get(live.url + "/v1/models/tiny"), 401)["type"] == "authentication_error"


def test_chat_and_completions_refuse_a_long_prompt_alike(http: httpx.Client) -> None:
    long = "sun moon " * 300
    shape = r"^(prompt|messages): \d+ prompt tokens; the limit is 127 \(max_prompt_tokens; the model's context is 128 tokens\)$"
    errors = [
        error_of(http.post("/v1/completions", json={"model": "tiny", "prompt": long}), 400),
        error_of(
            http.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": long}]},
            ),
            400,
        ),
    ]
    for err, param in zip(errors, ("prompt", "messages")):
        assert re.match(shape, err["message"]), err
        assert (err["param"], err["code"], err["type"]) == (
            param,
            "context_length_exceeded",
            "invalid_request_error",
        )


def test_max_prompt_tokens_over_the_context_warns(make_app, ckpt: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lmforge.serve.app"):
        app = make_app(max_prompt_tokens=1000)
    assert (
        "max_prompt_tokens 1000 is over the model's context (128 tokens): prompts are limited to 127"
        in caplog.text
    )
    with caplog.at_level(logging.WARNING, logger="lmforge.serve.app"):
        caplog.clear()
        make_app(max_prompt_tokens=100)
    assert "max_prompt_tokens" not in caplog.text
    assert app.state.settings.max_prompt_tokens == 1000
