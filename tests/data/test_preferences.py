"""Preference reader: every schema, HH-RLHF text, rankings → implied pairs, bad records with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.data.preferences import parse_hh, read_preferences

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf" / "harmless-base_test.jsonl.gz"


def write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_every_schema(tmp_path):
    user = {"role": "user", "content": "hi"}
    records = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "hello"}], "rejected": "go away"},
        {
            "messages": [user],
            "chosen": {"role": "assistant", "content": "hey"},
            "rejected": "no",
            "system": "S",
        },
        {
            "chosen": [user, {"role": "assistant", "content": "good"}],
            "rejected": [user, {"role": "assistant", "content": "bad"}],
        },
        {
            "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: yes",
            "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: no",
        },
        {"prompt": "rank", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]},
    ]
    prefs = read_preferences(write(tmp_path / "p.jsonl", records), [])
    assert [(p.chosen, p.rejected) for p in prefs[:5]] == [
        ("4", "5"), ("hello", "go away"), ("hey", "no"), ("good", "bad"), ("yes", "no"),
    ]  # fmt: skip
    assert prefs[2].prompt[0] == {"role": "system", "content": "S"}
    assert [m["role"] for m in prefs[4].prompt] == ["user", "assistant", "user"]
    assert prefs[4].conversation("chosen")[-1] == {"role": "assistant", "content": "yes"}
    assert [(p.chosen, p.rejected) for p in prefs[5:]] == [("z", "x"), ("z", "y"), ("x", "y")]
    assert prefs[0].where.endswith("p.jsonl:1")


def test_bad_records_are_reported_with_file_and_line(tmp_path):
    records = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        "not json",
        {"text": "no schema"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"chosen": "no markers", "rejected": "x"},
        {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]},
        {"prompt": 3, "chosen": "a", "rejected": "b"},
    ]
    problems: list = []
    prefs = read_preferences(write(tmp_path / "p.jsonl", records), problems)
    assert len(prefs) == 1
    assert [p.line for p in problems] == [2, 3, 4, 5, 6, 7]
    assert all(str(tmp_path / "p.jsonl") in str(p) for p in problems)


def test_parse_hh():
    assert parse_hh("\n\nHuman: hi there\n\nAssistant: hello") == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
    ]
    with pytest.raises(ValueError):
        parse_hh("Human: no leading blank line")


def test_hh_rlhf_file():
    if not HH.is_file():
        pytest.skip(f"{HH} is absent (../shared/data is on the development machine only)")
    problems: list = []
    prefs = read_preferences(HH, problems)
    assert len(prefs) + len(problems) == 2312
    assert len(prefs) > 2200
    assert all(p.prompt[-1]["role"] == "user" for p in prefs)


def test_ranking_records_are_validated_and_read_back_as_pairs(tmp_path):
    from lmforge.data.preferences import append_record, ranking_record

    responses = {"a": "first", "b": "second", "c": "third"}
    rec = ranking_record(
        "q?", responses, {"a": 2, "b": 3, "c": 1}, annotator="ann1", criteria={"c": {"accuracy": 5}}
    )
    assert rec["ranking"] == [2, 0, 1] and rec["annotator"] == "ann1"
    for ranks, message in (
        ({"a": 1, "b": 2}, "missing rank"),
        ({"a": 1, "b": 1, "c": 2}, "duplicate rank"),
        ({"a": 1, "b": 2, "c": 3, "z": 4}, "unknown response id"),
        ({"a": 1, "b": 2, "c": 4}, "integer in 1..3"),
    ):
        with pytest.raises(ValueError, match=message):
            ranking_record("q?", responses, ranks, annotator="ann1")
    with pytest.raises(ValueError, match="annotator"):
        ranking_record("q?", responses, {"a": 1, "b": 2, "c": 3}, annotator=" ")
    store = tmp_path / "rankings.jsonl"
    append_record(store, rec)
    append_record(store, ranking_record("q2", {"x": "yes", "y": "no"}, {"x": 1, "y": 2}, annotator="ann2"))
    with open(store, "a") as fh:
        fh.write('{"prompt": "torn')  # a crash mid-write leaves at most a partial last line
    problems: list = []
    prefs = read_preferences(store, problems)
    assert [(p.chosen, p.rejected) for p in prefs] == [
        ("third", "first"), ("third", "second"), ("first", "second"), ("yes", "no"),
    ]  # fmt: skip
    assert [p.line for p in problems] == [3]
