"""Supervised data readers: every conversation schema, labelled lines / JSONL / CSV, pairs, bad records
reported with file:line and skipped, the stable held-out split; the real SST-2 files when present."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmforge.data.supervised import holdout, read_conversations, read_labeled, read_pairs
from lmforge.errors import InputError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_conversation_schemas(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"prompt": "p", "response": "r", "system": "be nice"},
            {"instruction": "add", "input": "1 1", "output": "2"},
            {"instruction": "greet", "input": "", "output": "hi"},
            {"instruction": "t", "instances": [{"input": "a", "output": "A"}, {"input": "", "output": "B"}]},
            {"question": "q?", "answer": "#### 4"},
        ],
    )
    convs = read_conversations(path)
    assert len(convs) == 7
    assert convs[1] == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": "r"},
    ]
    assert convs[2][0]["content"] == "add\n\n1 1" and convs[3][0]["content"] == "greet"
    assert [c[-1]["content"] for c in convs[4:6]] == ["A", "B"]


def test_bad_conversation_records_are_reported_with_file_and_line(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"prompt": "p", "response": "r"}, "{not json", {"prompt": 3, "response": "r"}, {"other": 1}, [1, 2]],
    )
    problems: list = []
    assert len(read_conversations(path, problems)) == 1
    assert [p.line for p in problems] == [2, 3, 4, 5]
    assert str(problems[0]).startswith(f"{path}:2:")
    with pytest.raises(InputError):
        read_conversations(tmp_path / "missing.jsonl")


def test_labeled_lines_jsonl_and_csv(tmp_path):
    lines = tmp_path / "stsa.binary.train"
    lines.write_text("1 a stirring , funny film\n0 dull\n\nlonely\n1\tgood\n")
    problems: list = []
    got = read_labeled(lines, problems=problems)
    assert [(e.label, e.text) for e in got] == [
        ("1", "a stirring , funny film"),
        ("0", "dull"),
        ("1", "good"),
    ]
    assert problems[0].line == 4 and got[0].where.endswith(":1")
    j = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": True}, {"text": "z"}]
    )
    problems = []
    assert [e.label for e in read_labeled(j, problems=problems)] == ["1", "true"] and problems[0].line == 3
    c = tmp_path / "d.csv.gz"
    with gzip.open(c, "wt") as fh:
        fh.write('sentence,y\n"hello, world",pos\nbye,neg\n')
    got = read_labeled(c, text_field="sentence", label_field="y")
    assert [(e.text, e.label) for e in got] == [("hello, world", "pos"), ("bye", "neg")]
    with pytest.raises(InputError, match="needs columns"):
        read_labeled(c)


def test_pairs(tmp_path):
    j = write_jsonl(
        tmp_path / "p.jsonl", [{"query": "a", "positive": "b"}, {"anchor": "c", "text_b": "d"}, {"q": 1}]
    )
    problems: list = []
    assert [(p.a, p.b) for p in read_pairs(j, problems)] == [("a", "b"), ("c", "d")]
    assert problems[0].line == 3
    t = tmp_path / "p.txt"
    t.write_text("one\ttwo\nbroken line\n")
    problems = []
    assert [(p.a, p.b) for p in read_pairs(t, problems)] == [("one", "two")] and problems[0].line == 2


def test_holdout_is_stable_and_never_empty():
    items = list(range(100))
    train, held = holdout(items, 0.2, seed=3)
    assert (train, held) == holdout(items, 0.2, seed=3)
    assert sorted(train + held) == items and 5 < len(held) < 40
    assert len(holdout([1, 2], 0.01)[1]) == 1
    assert holdout(items, 0.0)[1] == []


@pytest.mark.skipif(not (SHARED / "sst2").is_dir(), reason="../shared/data/sst2 is not present")
def test_real_sst2_files():
    train = read_labeled(SHARED / "sst2" / "stsa.binary.train")
    dev = read_labeled(SHARED / "sst2" / "stsa.binary.dev")
    assert len(train) == 6920 and len(dev) == 872
    assert {e.label for e in train} == {"0", "1"}


def test_latin1_lines_are_repaired_not_dropped(tmp_path):
    from lmforge.data.supervised import skipped

    path = tmp_path / "rt-polarity.all"
    path.write_bytes("0 the action clichés pile up\n1 fine\n".encode("latin-1") + b"2\n")
    problems: list = []
    got = read_labeled(path, problems=problems)
    assert got[0].text == "the action clichés pile up" and len(got) == 2
    assert [p.kind for p in problems] == ["invalid_utf8", "missing_field"] and skipped(problems) == 1
    assert problems[0].message == "not UTF-8 (byte 18); read as Windows-1252, kept"  # at "é"
    assert (problems[1].line, problems[1].message) == (3, "expected 'LABEL TEXT'; skipped")


def test_sample_stratified_keeps_each_labels_share_on_a_sorted_file(caplog) -> None:
    from types import SimpleNamespace

    from lmforge.data.supervised import sample_stratified

    items = [SimpleNamespace(label="neg", i=i) for i in range(300)] + [
        SimpleNamespace(label="pos", i=300 + i) for i in range(100)
    ]  # sorted by label, as CR / MR / Subj files are
    got = sample_stratified(items, 40, seed=3)
    assert [x.label for x in got].count("neg") == 30 and [x.label for x in got].count("pos") == 10
    assert [x.i for x in got] == sorted(x.i for x in got)  # file order kept
    assert got == sample_stratified(items, 40, seed=3) and got != sample_stratified(items, 40, seed=4)
    assert sample_stratified(items, 0) == items and sample_stratified(items, 1000) == items
    assert len(sample_stratified(items, 7, seed=1)) == 7  # largest remainders fill the quota exactly
    with caplog.at_level("WARNING"):
        sample_stratified(items[:50], 10, what="dev")
    assert "dev: all 10 examples have one label ('neg')" in caplog.text
