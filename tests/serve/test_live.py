"""The server under uvicorn on an ephemeral loopback port: the official ``openai`` client completes, chats,
streams and embeds; a client that goes away (streaming or not) stops its generation; the concurrency
limit answers 429; the chat page streams a reply in headless Chromium."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from lmforge.serve.http import ServerThread


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.fixture
def live(make_app):
    with ServerThread(make_app(api_key="k-test")) as server:
        yield server


def test_openai_client_completes_chats_streams_and_embeds(live: ServerThread) -> None:
    import openai

    client = openai.OpenAI(base_url=live.url + "/v1", api_key="k-test", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    c = client.completions.create(model="tiny", prompt="the cat", max_tokens=8, temperature=0)
    assert c.choices[0].finish_reason in ("stop", "length") and c.usage.completion_tokens <= 8
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    reply = chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, stream=True
    )
    pieces = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
    assert "".join(pieces) == reply
    text = "".join(
        ch.choices[0].text
        for ch in client.completions.create(
            model="tiny", prompt="the cat", max_tokens=8, temperature=0, stream=True
        )
    )
    assert text == c.choices[0].text
    emb = client.embeddings.create(model="tiny", input=["the cat", "a dog"])  # the client asks for base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 32
    bad = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.BadRequestError, match="tools: unsupported field"):
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )


def wait_idle(url: str, headers: dict | None = None, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(url + "/health", headers=headers).json()
        if health["running_rows"] == 0 and health["in_flight"] == 0:
            return health
        time.sleep(0.05)
    raise AssertionError(f"generation still running: {health}")


def test_disconnect_cancels_generation(make_app, long_ckpt: Path) -> None:
    with ServerThread(make_app(long_ckpt, max_tokens=4000)) as server:
        req = {"model": "tiny", "prompt": "the", "max_tokens": 2000, "temperature": 0, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=req, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few events, then hang up
        assert any(x.startswith("data: {") for x in got)
        health = wait_idle(server.url)
        assert health["stats"]["cancelled"] == 1
        assert health["stats"]["tokens"] < 1500  # stopped well before max_tokens
        # non-streaming: the client gives up after 0.3 s; the server notices and stops
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + "/v1/completions", json={**req, "stream": False}, timeout=0.3)
        health = wait_idle(server.url)
        assert health["stats"]["cancelled"] == 2
        assert health["stats"]["tokens"] < 3000


def test_concurrency_limit_answers_429(make_app, long_ckpt: Path) -> None:
    with ServerThread(make_app(long_ckpt, max_concurrent=1, max_tokens=4000)) as server:
        req = {"model": "tiny", "prompt": "the", "max_tokens": 2000, "temperature": 0, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=req, timeout=30) as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            second = httpx.post(server.url + "/v1/completions", json={**req, "stream": False}, timeout=30)
            assert second.status_code == 429 and "too many requests" in second.json()["error"]["message"]
        wait_idle(server.url)
        ok = httpx.post(
            server.url + "/v1/completions", json={**req, "max_tokens": 2, "stream": False}, timeout=30
        )
        assert ok.status_code == 200


def test_chat_page_streams_a_reply(live: ServerThread, browser_page) -> None:
    page = browser_page
    page.goto(live.url + "/")
    page.fill("#api-key", "k-test")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
    page.fill("#system", "be brief")
    page.fill("#max-tokens", "24")
    page.fill("#message", "the cat sat")
    page.click("#send")
    page.wait_for_selector(".msg.user")
    assert page.inner_text(".msg.user") == "the cat sat"
    page.wait_for_selector(".msg.assistant:not(.streaming)")
    reply = page.eval_on_selector(".msg.assistant", "el => el.firstChild ? el.firstChild.textContent : ''")
    assert reply.strip(), "no streamed text appeared"
    assert page.inner_text("#error") == ""
    # a second turn carries the history
    page.fill("#message", "and the dog")
    page.press("#message", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant:not(.streaming)').length == 2")
    assert len(page.query_selector_all(".msg.user")) == 2
