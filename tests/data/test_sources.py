"""Tests for lmforge.data.sources and readers: builtin corpora, every file format, error reporting."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.data.sources import Problem, fingerprint, iter_documents, resolve_sources
from lmforge.errors import InputError

TEXTS = ["first document\nwith two lines", "second: naïve café ☕", 'third, with "quotes" and a comma']
COMPRESSORS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


def read_all(spec: str, **kwargs) -> tuple[list, list[Problem]]:
    problems: list[Problem] = []
    docs = [d for s in resolve_sources([spec], **kwargs) for d in iter_documents(s, problems)]
    return docs, problems


@pytest.fixture(scope="module")
def python_docs() -> list:
    (spec,) = resolve_sources(["builtin:python-docs"])
    return list(iter_documents(spec))


def test_builtin_python_docs_is_big_real_prose_with_stable_ids(python_docs):
    total = sum(len(d.text.encode()) for d in python_docs)
    assert total > 1_500_000
    ids = [d.id for d in python_docs]
    assert len(ids) == len(set(ids))
    assert ids[0].startswith("python-docs/topic/")
    assert "python-docs/json/__init__.py" in ids
    assert not any("/test/" in i or "idlelib" in i or "lib2to3" in i for i in ids)
    assert all(d.metadata["source"] == "builtin:python-docs" for d in python_docs)
    json_doc = python_docs[ids.index("python-docs/json/__init__.py")]
    assert "JSON" in json_doc.text and "\n\n" in json_doc.text  # module + function docstrings
    (spec,) = resolve_sources(["builtin:python-docs"])
    again = [d.id for d in itertools.islice(iter_documents(spec), 120)]
    assert again == ids[:120]  # deterministic order, across topics and the first files


def test_builtin_python_code_yields_source_files():
    (spec,) = resolve_sources(["builtin:python-code"])
    docs = list(itertools.islice(iter_documents(spec), 30))
    assert all(d.id.startswith("python-code/") and d.id.endswith(".py") for d in docs)
    assert [d.id for d in docs] == sorted(d.id for d in docs)
    assert any("def " in d.text for d in docs)


def _write(path: Path, data: bytes, suffix: str) -> Path:
    target = path.with_name(path.name + suffix)
    target.write_bytes(COMPRESSORS[suffix](data))
    return target


def _csv_bytes(texts: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "text"])
    writer.writerows([[i, t] for i, t in enumerate(texts)])
    return buf.getvalue().encode()


def _parquet_bytes(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), buf)
    return buf.getvalue()


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_each_format_reads_every_text(tmp_path, suffix):
    (tmp_path / "txt").mkdir()
    _write(tmp_path / "txt" / "a.txt", TEXTS[0].encode(), suffix)
    _write(tmp_path / "txt" / "b.md", TEXTS[1].encode(), suffix)
    docs, problems = read_all(str(tmp_path / "txt"))
    assert [d.text for d in docs] == TEXTS[:2] and not problems

    jsonl = "".join(json.dumps({"text": t, "other": 1}) + "\n" for t in TEXTS).encode()
    docs, problems = read_all(str(_write(tmp_path / "c.jsonl", jsonl, suffix)))
    assert [d.text for d in docs] == TEXTS and not problems
    assert docs[1].id.endswith("c.jsonl" + suffix + ":2") and docs[1].metadata["line"] == 2

    docs, problems = read_all(
        str(_write(tmp_path / "d.csv", _csv_bytes(TEXTS + ["multi\nline, field"]), suffix))
    )
    assert [d.text for d in docs] == TEXTS + ["multi\nline, field"] and not problems

    docs, problems = read_all(str(_write(tmp_path / "e.parquet", _parquet_bytes(TEXTS), suffix)))
    assert [d.text for d in docs] == TEXTS and not problems
    assert all(d.metadata["source"].endswith("e.parquet" + suffix) for d in docs)


def test_jsonl_bad_lines_are_reported_with_file_and_line_and_good_lines_kept(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"text": "good one"}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        "",
        json.dumps({"text": "good two"}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "bad \xff byte"}\n')
    docs, problems = read_all(str(path))
    assert [d.text for d in docs] == ["good one", "good two", "bad \ufffd byte"]
    assert [(p.line, p.kind) for p in problems] == [
        (2, "malformed_json"),
        (3, "missing_field"),
        (4, "missing_field"),
        (7, "invalid_utf8"),
    ]
    assert str(problems[0]).startswith(f"{path}:2: ")


def test_jsonl_text_field_is_configurable(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"content": "hello"}) + "\n")
    docs, problems = read_all(str(path), text_field="content")
    assert [d.text for d in docs] == ["hello"] and not problems


def test_invalid_utf8_in_text_file_is_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok \xc3\x28 then more")
    docs, problems = read_all(str(path))
    assert docs[0].text == "ok \ufffd( then more"
    assert [p.kind for p in problems] == ["invalid_utf8"]


def test_glob_and_directory_expand_sorted_and_recursive(tmp_path):
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "z.txt").write_text("z")
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "sub" / "notes.pdf").write_bytes(b"%PDF")  # skipped inside a directory
    (tmp_path / "sub" / ".hidden.txt").write_text("h")
    (spec,) = resolve_sources([str(tmp_path / "sub")])
    assert [p.name for p in spec.files] == ["a.txt", "z.txt"]
    (spec,) = resolve_sources([str(tmp_path / "**" / "*.txt")])
    assert [p.name for p in spec.files] == ["a.txt", "z.txt"]


def test_bad_specs_fail_before_any_work_listing_all_faults(tmp_path):
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        resolve_sources(
            [
                "builtin:nope",
                str(tmp_path / "missing.txt"),
                str(tmp_path / "*.jsonl"),
                str(tmp_path / "doc.pdf"),
                str(tmp_path / "empty"),
            ]
        )
    message = str(err.value)
    assert "builtin:nope" in message and "builtin:python-docs" in message
    assert "missing.txt: no such file" in message
    assert "glob matches nothing" in message
    assert "doc.pdf: unsupported file type" in message and ".jsonl" in message
    assert "holds no supported files" in message
    with pytest.raises(InputError, match="no sources"):
        resolve_sources([])


def test_missing_text_column_fails_at_resolve(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("id,body\n1,x\n")
    with pytest.raises(InputError) as err:
        resolve_sources([str(tmp_path / "t.parquet"), str(tmp_path / "t.csv")])
    assert "t.parquet: no column 'text'" in str(err.value) and "t.csv: no column 'text'" in str(err.value)


def test_corrupt_compressed_file_raises_input_error_naming_it(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "x"}\n' * 100)[:40])
    (spec,) = resolve_sources([str(path)])
    with pytest.raises(InputError, match="broken.jsonl.gz"):
        list(iter_documents(spec))


def test_fingerprint_changes_with_file_and_is_cheap_json(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one")
    (spec,) = resolve_sources([str(path)])
    before = fingerprint(spec)
    json.dumps(before)
    path.write_text("one more")
    assert fingerprint(spec) != before
    (builtin,) = resolve_sources(["builtin:python-docs"])
    assert set(fingerprint(builtin)) == {"spec", "python", "stdlib"}


def test_text_without_a_known_extension_is_read_as_text(tmp_path):
    (tmp_path / "wiki.train.raw").write_text("A line of prose from a raw text file.\n")
    (tmp_path / "README").write_text("No extension at all, still plain text.\n")
    (tmp_path / "blob.dat").write_bytes(b"\x00\x01binary")
    specs = resolve_sources([str(tmp_path / "wiki.train.raw"), str(tmp_path / "README")])
    texts = [d.text for s in specs for d in iter_documents(s)]
    assert texts == ["A line of prose from a raw text file.\n", "No extension at all, still plain text.\n"]
    with pytest.raises(InputError, match="blob.dat: unsupported file type \\(not plain text\\)"):
        resolve_sources([str(tmp_path / "blob.dat")])
