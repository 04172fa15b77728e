"""Bad sources among good ones: a corrupt .gz, .zst and parquet file, an empty directory and a glob
matching nothing are skipped with their reason (stats.json ``skipped_sources``, manifest metric) and
the run goes on with the good records; a file that breaks part-way keeps the records read before the
break and is reported at the line where it broke; ``strict: true`` stops before any work instead; all
sources bad stops with one error listing them."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.cli import main

FLAGS = ["--workers", "1", "--quality.enabled", "false", "--lang.enabled", "false", "-q"]


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(2000)]
    return [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(n)]


def jsonl(lines: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in lines).encode()


def output_ids(out: Path) -> list[str]:
    return [
        i
        for s in ("train", "val")
        for f in (out / s).glob("*.parquet")
        for i in pq.read_table(f)["id"].to_pylist()
    ]


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, list[str]]:
    """``in/`` with one good jsonl, a corrupt .gz, .zst and parquet, an empty directory, and the specs
    (with a glob matching nothing)."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.jsonl").write_bytes(jsonl(texts(6, 0)))
    (root / "bad.jsonl.gz").write_bytes(b"this is not gzip data at all")
    (root / "bad.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage after a zstd magic number" * 4)
    (root / "bad.parquet").write_bytes(b"PAR1 not really a parquet file PAR1")
    (root / "empty").mkdir()
    specs = [str(root / n) for n in ("good.jsonl", "bad.jsonl.gz", "bad.jsonl.zst", "bad.parquet", "empty")]
    return tmp_path, [*specs, str(root / "nothing-*.jsonl")]


def test_bad_sources_are_skipped_with_reasons_and_the_good_records_kept(sources):
    tmp_path, specs = sources
    out = tmp_path / "data"
    assert main(["data", "--out", str(out), "--input", json.dumps(specs), *FLAGS]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert len(output_ids(out)) == 6 and stats["docs_in"] == 6
    skipped = {Path(s["source"]).name: (s["kind"], s["reason"]) for s in stats["skipped_sources"]}
    assert skipped.keys() == {"bad.jsonl.gz", "bad.jsonl.zst", "bad.parquet", "empty", "nothing-*.jsonl"}
    assert (
        skipped["bad.jsonl.gz"][0]
        == skipped["bad.jsonl.zst"][0]
        == skipped["bad.parquet"][0]
        == "unreadable_file"
    )
    assert "Not a gzipped file" in skipped["bad.jsonl.gz"][1] and "cannot read" in skipped["bad.jsonl.zst"][1]
    assert skipped["empty"][0] == "empty_directory" and skipped["nothing-*.jsonl"] == (
        "no_match",
        "glob matches nothing",
    )
    assert stats["skipped_sources_by_kind"] == {"empty_directory": 1, "no_match": 1, "unreadable_file": 3}
    assert json.loads((out / "manifest.json").read_text())["metrics"]["skipped_sources"] == 5


def test_strict_stops_before_any_work(sources, capsys):
    tmp_path, specs = sources
    out = tmp_path / "data"
    assert main(["data", "--out", str(out), "--input", json.dumps(specs), "--strict", "true", *FLAGS]) == 2
    err = capsys.readouterr().err
    assert "invalid sources" in err and "nothing-*.jsonl: glob matches nothing" in err
    assert not out.exists() and not out.with_name("data.partial").exists()


def test_all_sources_bad_stops_listing_each(sources, capsys):
    tmp_path, specs = sources
    out = tmp_path / "data"
    assert main(["data", "--out", str(out), "--input", json.dumps(specs[1:]), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert "every source is bad" in err
    for name in ("bad.jsonl.gz", "bad.jsonl.zst", "bad.parquet", "empty", "nothing-*.jsonl"):
        assert name in err
    assert not out.exists() and not out.with_name("data.partial").exists()


def test_a_file_that_breaks_part_way_keeps_what_was_read(tmp_path, capsys):
    """A gzip whose CRC is wrong fails only at its end; a truncated one where it is cut."""
    lines = texts(300, 1)  # ~120 KB of JSON lines: past the 8 KiB sniffed before the run
    whole = gzip.compress(jsonl(lines))
    (tmp_path / "crc.jsonl.gz").write_bytes(whole[:-8] + bytes(x ^ 0xFF for x in whole[-8:-4]) + whole[-4:])
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(jsonl(texts(300, 2)))[: len(whole) // 2])
    out = tmp_path / "data"
    argv = ["data", "--out", str(out), "--input", str(tmp_path / "*.jsonl.gz"), *FLAGS]
    assert main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    bad = {Path(b.split(":")[0]).name: b for b in stats["bad_records"]}
    assert stats["bad_records_by_kind"] == {"truncated_file": 2}
    assert (
        "crc.jsonl.gz:301: file breaks here" in bad["crc.jsonl.gz"]
        and "the 300 documents" in bad["crc.jsonl.gz"]
    )
    cut = int(bad["cut.jsonl.gz"].split(":")[1])
    assert 1 < cut < 300 and f"the {cut - 1} documents before it are kept" in bad["cut.jsonl.gz"]
    assert stats["docs_in"] == 300 + cut - 1 and len(output_ids(out)) == stats["docs_out"]
    assert json.loads((out / "manifest.json").read_text())["metrics"]["truncated_files"] == 2
    assert main([*argv, "--out", str(tmp_path / "strict"), "--strict", "true"]) == 2
    assert "CRC check failed" in capsys.readouterr().err
