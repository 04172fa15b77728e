"""The API in-process (starlette TestClient over ASGI): every endpoint, the SSE chunk sequence ending with
``[DONE]``, chat over the chat template, seeds, logprobs, stop strings, embeddings (decoder and
encoder), auth, limits and bad inputs — each answered with an OpenAI-style error, none crashing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams, default_stop_ids
from lmforge.model.checkpoint import load_model
from lmforge.tokenizer.chat import chat_prompt
from lmforge.tokenizer.train import load_tokenizer


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


def sse(response) -> list:
    """The data payloads of a server-sent event stream, ``[DONE]`` kept as the string."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def test_health_and_models(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["arch"] == "decoder"
    assert health["context_length"] == client.app.state.scheduler.model.config.block_size
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]


def test_completion_matches_engine_and_counts_usage(client: TestClient, ckpt: Path) -> None:
    r = client.post(
        "/v1/completions", json={"model": "tiny", "prompt": "the cat", "max_tokens": 12, "temperature": 0}
    )
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    tok = load_tokenizer(ckpt / "tokenizer.json")
    model, _ = load_model(ckpt)
    ids = [tok.token_to_id("<|bos|>")] + tok.encode("the cat", add_special_tokens=False).ids
    want = Engine(model, tok).generate(
        [ids], SamplingParams(max_new_tokens=12, temperature=0, stop_ids=default_stop_ids(tok))
    )[0]
    (choice,) = body["choices"]
    assert choice["text"] == want.text and choice["finish_reason"] == want.finish_reason
    assert body["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": len(want.ids),
        "total_tokens": len(ids) + len(want.ids),
    }


def test_completion_prompt_list_token_ids_and_n(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": ["the", "a dog"], "n": 2, "max_tokens": 4, "seed": 1},
    )
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2, 3]
    r = client.post(
        "/v1/completions", json={"model": "tiny", "prompt": [0, 20, 21], "max_tokens": 3, "temperature": 0}
    )
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3
    r = client.post(
        "/v1/completions", json={"model": "tiny", "prompt": [[0, 20], [0, 21, 22]], "max_tokens": 3}
    )
    assert len(r.json()["choices"]) == 2 and r.json()["usage"]["prompt_tokens"] == 5


def test_completion_stream_chunks_end_with_done_and_equal_the_whole(client: TestClient) -> None:
    req = {"model": "tiny", "prompt": "the cat", "max_tokens": 10, "temperature": 0}
    whole = client.post("/v1/completions", json=req).json()
    events = sse(
        client.post(
            "/v1/completions", json={**req, "stream": True, "stream_options": {"include_usage": True}}
        )
    )
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_chat_uses_the_template_and_streams(client: TestClient, ckpt: Path) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat"}]
    req = {"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0}
    body = client.post("/v1/chat/completions", json=req).json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    tok = load_tokenizer(ckpt / "tokenizer.json")
    model, _ = load_model(ckpt)
    ids, _ = chat_prompt(tok, messages, 10_000)
    want = Engine(model, tok).generate(
        [ids], SamplingParams(max_new_tokens=12, temperature=0, stop_ids=default_stop_ids(tok))
    )[0]
    assert body["choices"][0]["message"]["content"] == want.text
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == len(want.ids)
    events = sse(client.post("/v1/chat/completions", json={**req, "stream": True}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want.text
    assert chunks[-1]["choices"][0]["finish_reason"] == want.finish_reason


def test_chat_content_parts_seeds_n_and_max_completion_tokens(client: TestClient) -> None:
    parts = [{"type": "text", "text": "the "}, {"type": "text", "text": "dog"}]
    req = {
        "model": "tiny",
        "messages": [{"role": "user", "content": parts}],
        "max_completion_tokens": 8,
        "seed": 5,
        "n": 3,
    }
    a, b = (client.post("/v1/chat/completions", json=req).json() for _ in range(2))
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]
    assert len({c["message"]["content"] for c in a["choices"]}) > 1  # choice i samples with seed + i
    assert all(c["finish_reason"] in ("stop", "length") for c in a["choices"])
    assert a["usage"]["completion_tokens"] <= 3 * 8


def test_logprobs(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": "the", "max_tokens": 5, "temperature": 0, "logprobs": 2},
    )
    lp = r.json()["choices"][0]["logprobs"]
    n = r.json()["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert all(x <= 0 for x in lp["token_logprobs"]) and all(len(t) == 2 for t in lp["top_logprobs"])
    req = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    content = client.post("/v1/chat/completions", json=req).json()["choices"][0]["logprobs"]["content"]
    assert content and all(
        len(c["top_logprobs"]) == 3 and c["top_logprobs"][0]["token"] == c["token"] for c in content
    )


def test_stop_strings_cut_the_text(client: TestClient) -> None:
    req = {"model": "tiny", "prompt": "the cat", "max_tokens": 16, "temperature": 0}
    text = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    stop = text[4:6]
    assert stop, text
    cut = client.post("/v1/completions", json={**req, "stop": stop}).json()["choices"][0]
    assert cut["text"] == text[: text.find(stop)] and cut["finish_reason"] == "stop"


def test_embeddings_decoder_float_and_base64(client: TestClient) -> None:
    req = {"model": "tiny", "input": ["the cat", "a dog ran", "the cat"]}
    body = client.post("/v1/embeddings", json=req).json()
    vecs = torch.tensor([d["embedding"] for d in body["data"]])
    assert vecs.shape == (3, 32) and torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(vecs[0], vecs[2]) and not torch.allclose(vecs[0], vecs[1])
    assert body["usage"]["prompt_tokens"] > 0 and body["object"] == "list"
    b64 = client.post("/v1/embeddings", json={**req, "encoding_format": "base64"}).json()["data"][0][
        "embedding"
    ]
    import numpy as np

    assert np.allclose(np.frombuffer(base64.b64decode(b64), dtype="<f4"), vecs[0].numpy())
    one = client.post("/v1/embeddings", json={"model": "tiny", "input": [0, 5, 6]}).json()
    assert len(one["data"]) == 1 and one["usage"]["prompt_tokens"] == 3


def test_encoder_checkpoint_serves_embeddings_only(make_app, encoder_ckpt: Path) -> None:
    with TestClient(make_app(encoder_ckpt)) as c:
        assert c.get("/health").json()["arch"] == "encoder"
        body = c.post("/v1/embeddings", json={"model": "tiny", "input": "the cat"}).json()
        assert len(body["data"][0]["embedding"]) == 32
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "the"})
        assert r.status_code == 400 and "embeddings only" in r.json()["error"]["message"]
        r = c.post(
            "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 400


def test_api_key(make_app, monkeypatch) -> None:
    with TestClient(make_app(api_key="s3cret")) as c:
        req = {"model": "tiny", "prompt": "the", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/v1/completions", json=req, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models").status_code == 401
        assert (
            c.post("/v1/completions", json=req, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
        assert (
            c.get("/health").status_code == 200 and c.get("/").status_code == 200
        )  # page and probe stay open


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
COMP = {"model": "tiny", "prompt": "the"}
BAD = [
    # (path, body, status, words the message must contain)
    ("/v1/chat/completions", {**CHAT, "tools": []}, 400, "tools: unsupported field"),
    ("/v1/completions", {**COMP, "logit_bias": {}}, 400, "logit_bias: unsupported field"),
    ("/v1/completions", {**COMP, "temperature": "1"}, 400, "temperature"),
    ("/v1/completions", {**COMP, "max_tokens": True}, 400, "max_tokens"),
    ("/v1/completions", {**COMP, "n": 1.5}, 400, "n"),
    ("/v1/completions", {**COMP, "temperature": 3}, 400, "temperature"),
    ("/v1/completions", {**COMP, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {**COMP, "max_tokens": 10**30}, 400, "max_tokens"),
    ("/v1/completions", {**COMP, "max_tokens": 100_000}, 400, "over this server's limit"),
    ("/v1/completions", {**COMP, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {**COMP, "seed": 10**30}, 400, "seed"),
    ("/v1/completions", {**COMP, "n": 100}, 400, "the limit is 8"),
    ("/v1/completions", {**COMP, "prompt": ["a"] * 5, "n": 2}, 400, "5 prompts x n=2"),
    ("/v1/completions", {**COMP, "prompt": [0, 5000]}, 400, "outside the vocabulary"),
    ("/v1/completions", {**COMP, "prompt": [0, -3]}, 400, "outside the vocabulary"),
    ("/v1/completions", {**COMP, "prompt": []}, 400, "prompt"),
    ("/v1/completions", {**COMP, "prompt": [[]]}, 400, "prompt"),
    ("/v1/completions", {**COMP, "prompt": {"a": 1}}, 400, "prompt"),
    ("/v1/completions", {**COMP, "prompt": "sun " * 400}, 400, "the limit is 127"),
    ("/v1/completions", {**COMP, "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    ("/v1/completions", {**COMP, "stop": [""]}, 400, "stop"),
    ("/v1/completions", {**COMP, "echo": True}, 400, "echo is not supported"),
    ("/v1/completions", {**COMP, "presence_penalty": 0.5}, 400, "presence_penalty is not supported"),
    ("/v1/completions", {"prompt": "the"}, 400, "model: required field is missing"),
    ("/v1/completions", {**COMP, "model": "gpt-4"}, 404, "not served here"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user"}]}, 400, "content"),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": "x", "name": "a"}]},
        400,
        "name",
    ),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "content"),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]},
        400,
        "system message may only come first",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": "sun " * 400}]},
        400,
        "prompt tokens",
    ),
    ("/v1/chat/completions", {**CHAT, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 50}, 400, "top_logprobs"),
    ("/v1/embeddings", {"model": "tiny", "input": ["x"] * 100}, 400, "the limit is 64"),
    ("/v1/embeddings", {"model": "tiny", "input": [[0, 999999]]}, 400, "outside the vocabulary"),
    ("/v1/embeddings", {"model": "tiny", "input": 5}, 400, "input"),
    ("/v1/embeddings", {"model": "tiny", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
]


@pytest.mark.parametrize("path,body,status,words", BAD, ids=[w for *_, w in BAD])
def test_bad_requests_get_clear_errors(client: TestClient, path, body, status, words) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"], err
    assert set(err) == {"message", "type", "param", "code"}
    assert client.get("/health").json()["status"] == "ok"


def test_malformed_bodies_routes_and_methods(client: TestClient) -> None:
    for raw in (
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe",
        b"",
        b"[" * 100_000,
        b'{"model": "tiny", "prompt": "a", "temperature": NaN}',
    ):
        r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json(), (raw[:20], r.text)
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/completions").status_code == 405
    assert client.get("/health").json()["status"] == "ok"


def test_body_size_limit(make_app) -> None:
    with TestClient(make_app(max_body_bytes=2000)) as c:
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "x" * 5000})
        assert r.status_code == 413 and "too large" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit counts the bytes as they arrive
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert (
            c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}).status_code
            == 200
        )


def test_chat_page_is_served_with_its_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/chat.js" in page.text and "http" not in page.text.replace("http-equiv", "")  # no CDN
    for asset in ("/static/chat.js", "/static/chat.css"):
        assert client.get(asset).status_code == 200
