"""Run store: manifests, caching on config and input hashes, atomic completion, resume of partial work."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from lmforge.config import opt
from lmforge.errors import InputError
from lmforge.runstore import read_json, read_manifest, run_stage


@dataclass
class Cfg:
    value: int = opt(1, "a value")
    src: str = opt("@up", "input", path=True)
    out: str = opt("", "out", path=True)


def make_up(run, text="hello", value=1):
    calls = []

    def work(cfg, ctx):
        calls.append(1)
        (ctx.dir / "a.txt").write_text(text)
        return {"n": len(text)}

    m = run_stage("up", Cfg(value=value), out=run / "up", inputs={}, work=work)
    return m, calls


def test_manifest_records_lineage(tmp_path):
    m, _ = make_up(tmp_path)
    on_disk = json.loads((tmp_path / "up" / "manifest.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["stage"] == "up"
    assert on_disk["config"]["value"] == 1 and on_disk["metrics"] == {"n": 5}
    assert "a.txt" in on_disk["outputs"] and len(on_disk["outputs"]["a.txt"]["sha256"]) == 64
    assert on_disk["code"]["lmforge"] and on_disk["duration_s"] >= 0
    assert not (tmp_path / "up.partial").exists()


def test_cache_hit_and_rerun_on_change(tmp_path):
    _, calls = make_up(tmp_path)
    m2, calls2 = make_up(tmp_path)
    assert calls2 == [] and m2["cached_last"] is True
    m3, calls3 = make_up(tmp_path, value=2)
    assert calls3 == [1] and m3["cached_last"] is False


def test_downstream_reruns_only_when_input_content_changes(tmp_path):
    make_up(tmp_path)
    runs = []

    def work(cfg, ctx):
        runs.append(1)
        (ctx.dir / "b.txt").write_text((ctx.inputs["src"] / "a.txt").read_text().upper())
        return {}

    def down():
        return run_stage("down", Cfg(), out=tmp_path / "down", inputs={"src": "@up"}, work=work)

    down()
    down()
    assert runs == [1]
    make_up(tmp_path, value=2)  # upstream re-runs but its output is identical: downstream stays cached
    down()
    assert runs == [1]
    make_up(tmp_path, text="changed", value=3)
    down()
    assert runs == [1, 1]
    assert (tmp_path / "down" / "b.txt").read_text() == "CHANGED"


def test_failed_stage_never_looks_finished_and_resumes(tmp_path):
    attempts = []

    def work(cfg, ctx):
        attempts.append(ctx.resumed)
        marker = ctx.dir / "progress"
        if not marker.exists():
            marker.write_text("half")
            raise RuntimeError("boom")
        return {"ok": 1}

    with pytest.raises(RuntimeError):
        run_stage("s", Cfg(), out=tmp_path / "s", inputs={}, work=work)
    assert not (tmp_path / "s").exists()
    partial = json.loads((tmp_path / "s.partial" / "manifest.json").read_text())
    assert partial["status"] == "failed" and "boom" in partial["error"]
    m = run_stage("s", Cfg(), out=tmp_path / "s", inputs={}, work=work)
    assert attempts == [False, True] and m["status"] == "complete"
    assert read_manifest(tmp_path / "s") is not None


def test_partial_with_other_key_is_discarded(tmp_path):
    def fail(cfg, ctx):
        (ctx.dir / "junk").write_text("x")
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        run_stage("s", Cfg(value=1), out=tmp_path / "s", inputs={}, work=fail)

    def ok(cfg, ctx):
        assert not ctx.resumed and not (ctx.dir / "junk").exists()
        return {}

    run_stage("s", Cfg(value=2), out=tmp_path / "s", inputs={}, work=ok)


def test_missing_or_unfinished_input_is_clear(tmp_path):
    with pytest.raises(InputError, match="has not finished"):
        run_stage("down", Cfg(), out=tmp_path / "down", inputs={"src": "@up"}, work=lambda c, x: {})
    with pytest.raises(InputError, match="not found"):
        run_stage(
            "down", Cfg(), out=tmp_path / "down", inputs={"src": tmp_path / "nope"}, work=lambda c, x: {}
        )


def test_metrics_must_be_numbers(tmp_path):
    with pytest.raises(TypeError, match="must be a number"):
        run_stage("s", Cfg(), out=tmp_path / "s", inputs={}, work=lambda c, x: {"a": "text"})


def test_config_inputs_expand_lists_and_skip_unset_fields():
    from dataclasses import dataclass, field

    from lmforge.runstore import config_inputs

    @dataclass
    class C:
        train: list = field(default_factory=lambda: ["a.jsonl", "b.jsonl"])
        val: str = ""
        reward_model: str = "@reward"

    assert config_inputs(C(), "train", "val", "reward_model") == {
        "train0": "a.jsonl",
        "train1": "b.jsonl",
        "reward_model": "@reward",
    }
    assert list(config_inputs(C(val="v.jsonl"), "val", "train")) == ["val", "train0", "train1"]


def test_read_json_names_the_file_and_what_it_is(tmp_path):
    (tmp_path / "ok.json").write_text('{"r": 8}')
    assert read_json(tmp_path / "ok.json") == {"r": 8}
    (tmp_path / "bad.json").write_text("{r: 8")
    with pytest.raises(InputError, match=r"cannot read adapter config .*bad\.json: Expecting"):
        read_json(tmp_path / "bad.json", "adapter config")
    with pytest.raises(InputError, match=r"cannot read .*missing\.json: .*No such file"):
        read_json(tmp_path / "missing.json")
