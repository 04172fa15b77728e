"""The ranking app of ``align collect`` in-process (httpx over ASGI): valid rankings are stored and read
back as preference pairs; every kind of invalid submission is rejected with a clear message and leaves
the store untouched; concurrent annotators never corrupt it; with a key, the API needs it and the page
does not."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from lmforge.data.preferences import read_preferences, read_rankings
from lmforge.serve.ranking import RankingStore, RankItem, create_ranking_app

PROMPT = [{"role": "user", "content": "say something nice"}]


def items() -> list[RankItem]:
    return [
        RankItem("p0", PROMPT, {"r0": "good", "r1": "bad", "r2": "fine"}),
        RankItem("p1", [{"role": "user", "content": "2+2?"}], {"r0": "4", "r1": "5"}),
    ]


def call(store: RankingStore, method: str, url: str, api_key: str = "", **kw) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_ranking_app(store, api_key=api_key))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())


def test_page_items_and_a_valid_ranking(tmp_path):
    store = RankingStore(items(), tmp_path / "rankings.jsonl", meta={"model": "m"})
    page = call(store, "GET", "/")
    assert page.status_code == 200 and "/static/rank.js" in page.text
    for name, kind in (("rank.js", "javascript"), ("rank.css", "css")):
        r = call(store, "GET", f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert call(store, "GET", "/static/../ranking.py").status_code == 404
    missing = call(store, "GET", "/api/nothing")
    assert missing.status_code == 404 and "not_found" in missing.json()["error"]["type"]
    listed = call(store, "GET", "/api/items").json()
    assert [i["id"] for i in listed["items"]] == ["p0", "p1"] and listed["count"] == 0
    body = {
        "item": "p0",
        "annotator": "ann",
        "ranks": {"r0": 1, "r1": 3, "r2": 2},
        "criteria": {"r0": {"accuracy": 5, "coherence": 4}, "r1": {}},
        "note": "r1 is rude",
    }
    r = call(store, "POST", "/api/rankings", json=body)
    assert r.status_code == 200 and r.json() == {"stored": True, "count": 1, "done": False}
    (rec,) = [json.loads(line) for line in (tmp_path / "rankings.jsonl").read_text().splitlines()]
    assert rec["item"] == "p0" and rec["annotator"] == "ann" and rec["model"] == "m"
    assert rec["responses"] == ["good", "bad", "fine"] and rec["ranking"] == [0, 2, 1]
    assert rec["criteria"] == {"r0": {"accuracy": 5, "coherence": 4}} and rec["note"] == "r1 is rude"
    pairs = read_preferences(tmp_path / "rankings.jsonl")
    assert [(p.chosen, p.rejected) for p in pairs] == [("good", "fine"), ("good", "bad"), ("fine", "bad")]
    assert read_rankings(tmp_path / "rankings.jsonl")[0].responses == ("good", "fine", "bad")
    # the next item for this annotator is the one they have not ranked; for another, the least-ranked
    assert call(store, "GET", "/api/next", params={"annotator": "ann"}).json()["item"]["id"] == "p1"
    assert call(store, "GET", "/api/next", params={"annotator": "bob"}).json()["item"]["id"] == "p1"
    nxt = call(store, "GET", "/api/next", params={"annotator": "bob", "skip": "p1"}).json()
    assert nxt["item"]["id"] == "p0"


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2}}, 422, "missing rank for response"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 1, "r2": 2}}, 422, "duplicate rank"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2, "r2": 3, "rX": 4}}, 422, "unknown response id"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2, "r2": 9}}, 422, "integer in 1..3"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": "1", "r1": 2, "r2": 3}}, 422, "integer in 1..3"),
        ({"item": "p0", "annotator": "a", "ranks": [1, 2, 3]}, 422, "ranks: expected"),
        ({"item": "p9", "annotator": "a", "ranks": {"r0": 1}}, 404, "unknown item 'p9'"),
        ({"item": "p0", "annotator": " ", "ranks": {"r0": 1, "r1": 2, "r2": 3}}, 422, "annotator"),
        ({"item": "p0", "ranks": {"r0": 1, "r1": 2, "r2": 3}}, 422, "annotator"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2, "r2": 3},
          "criteria": {"r0": {"accuracy": 6}}}, 422, "criteria"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2, "r2": 3},
          "criteria": {"r0": {"politeness": 3}}}, 422, "accuracy"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2, "r2": 3},
          "criteria": {"rZ": {"accuracy": 3}}}, 422, "unknown response id"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2, "r2": 3}, "criteria": [1]}, 422, "criteria"),
        ({"item": "p0", "annotator": "a", "ranks": {"r0": 1, "r1": 2, "r2": 3}, "note": 5}, 422, "note"),
        ([1, 2], 400, "JSON object"),
    ],
)  # fmt: skip
def test_invalid_submissions_are_rejected_and_store_nothing(tmp_path, body, status, message):
    path = tmp_path / "rankings.jsonl"
    store = RankingStore(items(), path)
    good = {"item": "p1", "annotator": "a", "ranks": {"r0": 1, "r1": 2}}
    assert call(store, "POST", "/api/rankings", json=good).status_code == 200
    before = path.read_bytes()
    r = call(store, "POST", "/api/rankings", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    assert path.read_bytes() == before and store.count == 1


def test_not_json_and_repeated_submissions(tmp_path):
    path = tmp_path / "rankings.jsonl"
    store = RankingStore(items(), path)
    r = call(
        store, "POST", "/api/rankings", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    good = {"item": "p1", "annotator": "a", "ranks": {"r0": 2, "r1": 1}}
    assert call(store, "POST", "/api/rankings", json=good).status_code == 200
    again = call(store, "POST", "/api/rankings", json=good)
    assert again.status_code == 409 and "already ranked" in again.json()["error"]["message"]
    huge = {"item": "p0", "annotator": "b", "ranks": {"r0": 1, "r1": 2, "r2": 3}, "note": "x" * 70_000}
    too_big = call(store, "POST", "/api/rankings", json=huge)
    assert too_big.status_code == 413 and "too large" in too_big.json()["error"]["message"]
    assert len(path.read_text().splitlines()) == 1


def test_store_survives_restarts_torn_lines_and_concurrent_annotators(tmp_path):
    path = tmp_path / "rankings.jsonl"
    done = []
    store = RankingStore(items(), path, limit=2, on_limit=lambda: done.append(True))
    call(store, "POST", "/api/rankings", json={"item": "p1", "annotator": "a", "ranks": {"r0": 1, "r1": 2}})
    with open(path, "a") as fh:
        fh.write('{"item": "p0", "torn')  # a crash in the middle of a write
    restarted = RankingStore(items(), path, limit=2, on_limit=lambda: done.append(True))
    assert restarted.count == 1 and "a" in restarted.ranked["p1"]  # who ranked what is read back

    async def many() -> list[int]:
        transport = httpx.ASGITransport(app=create_ranking_app(restarted))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            rs = await asyncio.gather(
                *(
                    client.post("/api/rankings", json={"item": "p0", "annotator": f"ann{i}",
                                                       "ranks": {"r0": 1, "r1": 2, "r2": 3}})
                    for i in range(8)
                )
            )  # fmt: skip
        return [r.status_code for r in rs]

    assert asyncio.run(many()) == [200] * 8
    problems: list = []
    rankings = read_rankings(path, problems)
    assert len(rankings) == 9 and [p.line for p in problems] == [2]  # only the torn fragment is lost
    assert restarted.count == 9 and restarted.annotators() == 9 and done == [True]


def test_api_key_guards_the_api_and_not_the_page(tmp_path):
    store = RankingStore(items(), tmp_path / "rankings.jsonl")
    key = "k3y-for-annotators"
    body = {"item": "p1", "annotator": "ann", "ranks": {"r0": 1, "r1": 2}}
    assert call(store, "GET", "/", api_key=key).status_code == 200  # the page loads and asks for it
    assert call(store, "GET", "/static/rank.js", api_key=key).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):  # none, wrong, no Bearer
        for method, url, kw in (
            ("GET", "/api/next?annotator=ann", {}),
            ("GET", "/api/items", {}),
            ("POST", "/api/rankings", {"json": body}),
        ):
            r = call(store, method, url, api_key=key, headers=headers, **kw)
            assert r.status_code == 401, (method, url, headers)
            err = r.json()["error"]
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
            assert "Bearer" in err["message"]
    assert (tmp_path / "rankings.jsonl").read_text() == "" and store.count == 0  # nothing stored
    good = {"Authorization": f"Bearer {key}"}
    r = call(store, "GET", "/api/next?annotator=ann", api_key=key, headers=good)
    assert r.status_code == 200 and r.json()["item"]["id"] in ("p0", "p1")
    r = call(store, "POST", "/api/rankings", api_key=key, headers=good, json=body)
    assert r.status_code == 200 and r.json()["count"] == 1
    assert call(store, "GET", "/api/items").status_code == 200  # no key set: open, as before
