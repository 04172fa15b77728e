"""``align collect`` end to end: a tiny random checkpoint samples replies, a live uvicorn serves the
ranking page on an ephemeral port, headless Chromium ranks the replies (numbers, ▲/▼ and a drag) and
submits; the stage then finishes at ``max_rankings`` and the JSONL record matches what was on screen.
A second run reuses the stored replies and rankings instead of sampling again. With an API key, the
printed link opens a tab that ranks, a tab without it is asked for it, and no file keeps it."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from lmforge.data.preferences import read_preferences


def start_collect(cfg, holder: dict) -> threading.Thread:
    from lmforge.stages.align.collect import main

    def run() -> None:
        try:
            holder["manifest"] = main(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            holder["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for_url(partial: Path, thread: threading.Thread, holder: dict) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "error" in holder:
            raise holder["error"]
        if (partial / "server.json").is_file():
            return json.loads((partial / "server.json").read_text())["url"]
        time.sleep(0.1)
    pytest.fail("the collect stage never started serving")


def submit_the_last_ranking(page, thread: threading.Thread, holder: dict) -> dict:
    """Submit the ranking on ``page``, the one the stage waits for (``max_rankings=1``); the stage's
    manifest once it has finished."""
    page.click("#submit")
    page.wait_for_selector("#message.ok")
    assert "ranking 1 stored" in page.text_content("#message")
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in holder, holder.get("error")
    return holder["manifest"]


def collect_config(align_dir, tmp_path, out, **overrides):
    """A collect stage over two prompts, 3 replies each, one ranking to collect, any free port."""
    from lmforge.stages.align.collect import Config

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say good\nsay the\n")
    fields = dict(n_responses=3, max_new_tokens=6, temperature=1.0, port=0, max_rankings=1, device="cpu")
    return Config(
        model=str(align_dir / "decoder"), prompts=str(prompts), out=str(out), **{**fields, **overrides}
    )


def test_collect_rank_in_a_browser_and_restart(align_dir, tmp_path, browser_page, caplog):

    out = tmp_path / "collect"
    cfg = collect_config(align_dir, tmp_path, out)
    holder: dict = {}
    thread = start_collect(cfg, holder)
    url = wait_for_url(out.with_name("collect.partial"), thread, holder)

    page = browser_page
    page.set_default_timeout(60_000)  # a busy shared machine
    page.goto(url)
    page.wait_for_selector("#responses .card")
    page.fill("#annotator", "alice")
    page.press("#annotator", "Tab")  # change → the next item for alice
    page.wait_for_selector("#responses .card")
    cards = page.locator("#responses .card")
    k = cards.count()
    assert k >= 2
    # incomplete ranking first: the server's message is shown and nothing is stored
    cards.nth(0).locator(".rank").fill("1")
    page.click("#submit")
    page.wait_for_selector("#message.error")
    assert "missing rank" in page.text_content("#message")
    # rank by numbers in reverse screen order, then move the last card up and drag the first to the end
    for i in range(k):
        cards.nth(i).locator(".rank").fill(str(k - i))
    cards.nth(k - 1).locator("button.up").click()  # reorders the cards; ranks follow the order
    cards.nth(0).drag_to(cards.nth(k - 1))
    ids = page.eval_on_selector_all("#responses .card", "cs => cs.map(c => c.dataset.id)")
    ranks = page.eval_on_selector_all("#responses .card .rank", "rs => rs.map(r => r.value)")
    assert ranks == [str(i + 1) for i in range(k)]
    cards.nth(0).locator("select[name=accuracy]").select_option("5")
    page.fill("#note", "first is best")
    manifest = submit_the_last_ranking(page, thread, holder)
    assert manifest["status"] == "complete" and manifest["stage"] == "align.collect"
    assert manifest["metrics"]["rankings"] == 1 and manifest["metrics"]["annotators"] == 1
    assert not (out / "server.json").exists() and "rankings.jsonl" in manifest["outputs"]
    items = {r["item"]: r for r in map(json.loads, (out / "responses.jsonl").read_text().splitlines())}
    (rec,) = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert rec["annotator"] == "alice" and rec["note"] == "first is best"
    assert rec["criteria"] == {ids[0]: {"accuracy": 5}}
    texts = items[rec["item"]]["responses"]
    assert [rec["responses"][i] for i in rec["ranking"]] == [texts[i] for i in ids]  # screen order = rank
    assert rec["prompt"] == items[rec["item"]]["prompt"]
    pairs = read_preferences(out / "rankings.jsonl")
    assert len(pairs) == k * (k - 1) // 2 and pairs[0].chosen == texts[ids[0]]

    # the same collection again (forced): replies and rankings are reused; max_rankings is already met
    replies = (out / "responses.jsonl").read_bytes()
    from lmforge.stages.align.collect import main

    with caplog.at_level(logging.INFO, logger="lmforge"):
        again = main(cfg, force=True)
    assert again["metrics"]["rankings"] == 1 and again["metrics"]["rankings_this_session"] == 0
    assert (out / "responses.jsonl").read_bytes() == replies
    assert "not sampled again" in caplog.text and "continuing the collection" in caplog.text


def test_collect_with_an_api_key_link_in_a_browser(align_dir, tmp_path, browser_page, capsys):
    """``--api_key``: the printed link carries the key; a tab opened from it ranks and submits; a tab
    without it is asked for the key; the live API answers 401 without it; no file keeps the key."""
    import re

    import httpx

    key = "s3cret key/+"  # a space, a slash and a plus: the link must quote it
    out = tmp_path / "collect"
    cfg = collect_config(align_dir, tmp_path, out, api_key=key)
    holder: dict = {}
    thread = start_collect(cfg, holder)
    partial = out.with_name("collect.partial")
    url = wait_for_url(partial, thread, holder)
    printed, deadline = "", time.monotonic() + 30
    while "ranking page for annotators" not in printed and time.monotonic() < deadline:
        printed += capsys.readouterr().err
        time.sleep(0.05)
    link = re.search(r"ranking page for annotators: (\S+)", printed).group(1)
    assert link.startswith(url + "?key=") and key not in link  # quoted
    server = json.loads((partial / "server.json").read_text())
    assert server["auth"] is True and key not in json.dumps(server)
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/").status_code == 200
        assert client.get("/api/items").status_code == 401
        assert client.get("/api/items", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/api/items", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    page = browser_page
    page.set_default_timeout(60_000)  # a busy shared machine
    asked = page.context.browser.new_page()  # another tab (its own context): no key stored
    asked.set_default_timeout(60_000)
    asked.goto(url)
    asked.wait_for_selector("#keybox:not([hidden])")
    assert "access key" in asked.text_content("#message") and asked.locator("#responses .card").count() == 0
    asked.fill("#key", key)
    asked.press("#key", "Tab")  # change → the key is kept for this tab and the item loads
    asked.wait_for_selector("#responses .card")
    assert asked.is_hidden("#keybox")
    asked.close()

    page.goto(link)
    page.wait_for_selector("#responses .card")
    assert "key=" not in page.url and page.is_hidden("#keybox")  # out of the address bar
    assert page.evaluate("sessionStorage.getItem('lmforge.rank.key')") == key
    page.fill("#annotator", "bob")
    page.press("#annotator", "Tab")
    page.wait_for_selector("#responses .card")
    cards = page.locator("#responses .card")
    for i in range(cards.count()):
        cards.nth(i).locator(".rank").fill(str(i + 1))
    manifest = submit_the_last_ranking(page, thread, holder)
    assert manifest["metrics"]["rankings"] == 1 and manifest["config"]["api_key"] == "(set)"
    (rec,) = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert rec["annotator"] == "bob"
    for f in out.iterdir():  # the manifest, stage.log, responses, rankings: none holds the key
        assert key not in f.read_text(errors="replace") and "s3cret" not in f.read_text(errors="replace"), f


def test_collect_warns_when_exposed_without_a_key(caplog, monkeypatch):
    from lmforge.stages.align.collect import Config, resolve_key, warn_if_exposed

    monkeypatch.delenv("LMFORGE_API_KEY", raising=False)
    assert resolve_key(Config(prompts="p.txt")) == ""
    monkeypatch.setenv("LMFORGE_API_KEY", "from-env")  # the variable lmforge serve reads
    assert resolve_key(Config(prompts="p.txt")) == "from-env"
    assert resolve_key(Config(prompts="p.txt", api_key="given")) == "given"

    with caplog.at_level(logging.WARNING, logger="lmforge"):
        assert not warn_if_exposed("127.0.0.1", "") and not warn_if_exposed("::1", "")
        assert not warn_if_exposed("localhost", "") and not warn_if_exposed("0.0.0.0", "key")
        assert not caplog.records
        assert warn_if_exposed("0.0.0.0", "") and warn_if_exposed("::", "")
        assert warn_if_exposed("192.0.2.7", "") and warn_if_exposed("ranker.example", "")
    assert len(caplog.records) == 4 and "without an API key" in caplog.records[0].getMessage()


def test_collect_config_errors():
    from lmforge.config import ConfigError
    from lmforge.stages.align.collect import Config

    for bad, key in (
        ({"n_responses": 1}, "n_responses"),
        ({"temperature": 0.0}, "temperature"),
        ({}, "prompts"),
    ):
        with pytest.raises(ConfigError, match=key):
            Config(out="x", **({"prompts": "p.txt"} if key != "prompts" else {}), **bad).validate()


def wait_for_server(path: Path, holder: dict) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if "error" in holder:
            raise holder["error"]
        if path.is_file():
            return json.loads(path.read_text())["url"]
        time.sleep(0.1)
    pytest.fail(f"nothing served at {path}")


def rank_everything(url: str, annotator: str, n: int) -> None:
    """Rank ``n`` items over HTTP as one person (reply ids in the served order, best first)."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(n):
            item = client.get("/api/next", params={"annotator": annotator}).json()["item"]
            ranks = {r["id"]: k + 1 for k, r in enumerate(item["responses"])}
            r = client.post(
                "/api/rankings", json={"item": item["id"], "annotator": annotator, "ranks": ranks}
            )
            assert r.status_code == 200, r.text


def test_two_rounds_of_the_loop_through_the_run_store(align_dir, tmp_path):
    """collect_r1 → reward_r1 + dpo_r1 (on "@collect_r1/rankings.jsonl") → collect_r2 sampling from
    dpo_r1, as one `lmforge run`; people rank over HTTP at each collect."""
    import yaml

    from lmforge.stages.run import Config, main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say good\nsay the\nsay bad\n")
    common = {"prompts": str(prompts), "n_responses": 3, "max_new_tokens": 6, "temperature": 1.0,
              "port": 0, "device": "cpu"}  # fmt: skip
    train = {"device": "cpu", "threads": 1, "max_steps": 3, "eval_every": 3, "batch_size": 2}
    recipe = {
        "name": "loop",
        "stages": {
            "collect_r1": {"stage": "align.collect", "model": str(align_dir / "decoder"), "max_rankings": 3, **common},
            "reward_r1": {"stage": "align.reward", "model": str(align_dir / "decoder"), "loss": "plackett_luce",
                          "train": ["@collect_r1/rankings.jsonl"], "val_fraction": 0.3, **train},
            "dpo_r1": {"stage": "align.dpo", "model": str(align_dir / "decoder"), "reward_model": "@reward_r1",
                       "train": ["@collect_r1/rankings.jsonl"], "val_fraction": 0.3, "n_judge": 2,
                       "judge_tokens": 4, "n_kl": 2, **train},
            "collect_r2": {"stage": "align.collect", "model": "@dpo_r1", "max_rankings": 1, **common},
        },
    }  # fmt: skip
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    holder: dict = {}

    def run() -> None:
        try:
            holder["manifests"] = main(Config(recipe=str(tmp_path / "loop.yaml"), out=str(run_dir)))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            holder["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = wait_for_server(run_dir / "collect_r1.partial" / "server.json", holder)
    rank_everything(url, "alice", 3)
    url = wait_for_server(run_dir / "collect_r2.partial" / "server.json", holder)
    rank_everything(url, "bob", 1)
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in holder, holder.get("error")
    by = {m["instance"]: m for m in holder["manifests"]}
    assert list(by) == ["collect_r1", "reward_r1", "dpo_r1", "collect_r2"]
    assert by["reward_r1"]["inputs"]["train0"]["path"] == str(run_dir / "collect_r1" / "rankings.jsonl")
    rm = by["reward_r1"]["metrics"]  # training, step-selection and held-out rankings: the 3 collected
    assert rm["train_rankings"] + (rm["select_pairs"] + rm["val_pairs"]) // 3 == 3
    assert "dpo_win_rate" in by["dpo_r1"]["metrics"]
    assert by["collect_r2"]["inputs"]["model"]["path"] == str(run_dir / "dpo_r1")
    assert by["collect_r2"]["metrics"]["rankings"] == 1
    (rec,) = [
        json.loads(line) for line in (run_dir / "collect_r2" / "rankings.jsonl").read_text().splitlines()
    ]
    assert rec["annotator"] == "bob" and rec["model"] == str(run_dir / "dpo_r1")


def test_rankings_are_never_discarded_by_a_changed_collection(align_dir, tmp_path):
    from lmforge.config import ConfigError
    from lmforge.stages.align.collect import Config, main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say good\n")
    out = tmp_path / "collect"
    out.mkdir()
    (out / "rankings.jsonl").write_text('{"item": "p0", "annotator": "a"}\n')
    (out / "manifest.json").write_text(json.dumps({"status": "complete", "cache_key": "old", "outputs": {}}))
    cfg = Config(model=str(align_dir / "decoder"), prompts=str(prompts), out=str(out), n_responses=2,
                 max_new_tokens=4, port=0, max_rankings=1, device="cpu")  # fmt: skip
    with pytest.raises(ConfigError, match="never discarded"):
        main(cfg)
    assert (out / "rankings.jsonl").read_text() == '{"item": "p0", "annotator": "a"}\n'
