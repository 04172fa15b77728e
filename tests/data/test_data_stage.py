"""The data stage end to end on generated inputs: dedup, bad input, early errors, resume, Ray = local."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]

WORDS = """the of and to in is that it was for on are with as his they be at one have this from or had by
word but what some we can out other were all there when up use your how said an each she which do their time
if will way about many then them write would like so these her long make thing see him two has look more day
could go come did number sound no most people my over know water than call first who may down side been now
find any new work part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line differ turn cause
much mean before move right boy old too same tell does set three want air well also play small end put home
read hand port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father head stand own
page should country found answer school grow study still learn plant cover food sun four between state keep
eye never last let thought city tree cross farm hard start might story saw far sea draw left late run while
press close night real life few north open seem together next white children begin got walk example ease
paper group always music those both mark often letter until mile river car feet care second book carry took
science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood main
enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct
pose leave song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew""".split()


def english(rng: random.Random, sentences: int = 12) -> str:
    """A document of random English words that the default quality and language filters keep."""
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 16))]
        words[rng.randrange(3, 8)] = "the"
        words[rng.randrange(8, 10)] = "and"
        out.append(" ".join(words).capitalize() + ".")
    return "\n".join(out)


def near_copy(rng: random.Random, text: str) -> str:
    """``text`` with one word replaced: word 5-shingle Jaccard similarity about 0.93."""
    words = text.split(" ")
    i = rng.randrange(20, len(words) - 20)
    words[i] = "zebra"
    return " ".join(words)


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def run_data(out: Path, *args: str) -> tuple[dict, dict]:
    assert main(["data", "--out", str(out), "-q", *args]) == 0
    return json.loads((out / "stats.json").read_text()), json.loads((out / "manifest.json").read_text())


def output_ids(out: Path) -> list[str]:
    return [
        i
        for s in ("train", "val")
        for f in sorted((out / s).glob("*.parquet"))
        for i in pq.read_table(f)["id"].to_pylist()
    ]


def rejects(out: Path, kind: str) -> dict[str, dict]:
    found = {}
    for f in sorted((out / "rejects" / kind).glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            found[record.get("id") or f"{record['file']}:{record['line']}"] = record
    return found


def tree(out: Path) -> dict[str, bytes]:
    """Every output file except the manifest, logs and metrics (which hold timings)."""
    skip = {"manifest.json", "stage.log", "metrics.jsonl"}
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def accounted(stats: dict) -> bool:
    return stats["docs_in"] == stats["docs_out"] + sum(stats["drops"].values())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A corpus with planted exact and near duplicates across files (and work units) and one email."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("planted")
    a = [english(rng) for _ in range(30)]
    a[3] += "\nWrite to the office at jane.doe@example.com and the team will answer."
    b = [english(rng) for _ in range(20)]
    exact = [a[1] + "  \n", "\r\n".join(a[7].split("\n")), b[2], a[3]]  # equal after normalisation
    near = [near_copy(rng, t) for t in (a[0], a[10], a[20], b[5], b[15])] + [b[9] + "\nThe end."]
    write_jsonl(root / "corpus" / "a.jsonl", a)
    write_jsonl(root / "corpus" / "b.jsonl", b[:10] + exact[:2] + b[10:])
    write_jsonl(root / "corpus" / "c.jsonl", near[:3])
    for i, t in enumerate(near[3:] + exact[2:]):  # small files: grouped into units
        (root / "corpus" / "small" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (root / "corpus" / "small" / f"{i}.txt").write_text(t, encoding="utf-8")
    out = root / "data"
    stats, manifest = run_data(out, "--input", str(root / "corpus"), "--unit_mb", "0.01", "--workers", "2")
    return root, out, stats, manifest


def test_planted_duplicates_are_found_and_distinct_documents_kept(planted):
    root, out, stats, manifest = planted
    corpus = root / "corpus"
    a_ids = [f"{corpus / 'a.jsonl'}:{i}" for i in range(1, 31)]
    b_ids = [f"{corpus / 'b.jsonl'}:{i}" for i in (*range(1, 11), *range(13, 23))]
    assert sorted(output_ids(out)) == sorted(a_ids + b_ids)  # every distinct document, nothing else
    assert stats["drops"] == {"exact_duplicate": 4, "near_duplicate": 6}
    assert stats["units"] > 3  # files were cut into several units: duplicates were found across them
    assert stats["duplicates"]["exact"]["clusters"] == 4 and stats["duplicates"]["near"]["clusters"] == 6
    dropped = rejects(out, "duplicates")
    assert dropped[f"{corpus / 'b.jsonl'}:11"]["duplicate_of"] == a_ids[1]
    assert dropped[f"{corpus / 'b.jsonl'}:12"]["reason"] == "exact_duplicate"
    assert dropped[f"{corpus / 'c.jsonl'}:1"] | {"text": ""} == {
        "id": f"{corpus / 'c.jsonl'}:1",
        "reason": "near_duplicate",
        "duplicate_of": a_ids[0],
        "source": str(corpus),
        "text": "",
    }
    assert dropped[str(corpus / "small" / "2.txt")]["duplicate_of"] == f"{corpus / 'b.jsonl'}:10"  # b[9]
    assert dropped[str(corpus / "small" / "3.txt")]["duplicate_of"] == f"{corpus / 'b.jsonl'}:3"  # b[2]
    assert accounted(stats) and manifest["metrics"]["near_duplicate_clusters"] == 6


def test_stats_explain_steps_splits_and_pii(planted):
    _, out, stats, manifest = planted
    steps = [s["step"] for s in stats["steps"]]
    assert steps[0] == "normalize" and steps[-1] == "dedup" and {"quality", "lang", "pii"} <= set(steps)
    for before, after in zip(stats["steps"], stats["steps"][1:]):
        assert before["docs_out"] == after["docs_in"]
        assert before["docs_in"] - before["docs_out"] == sum(before["drops"].values())
    assert stats["splits"]["train"]["docs"] + stats["splits"]["val"]["docs"] == stats["docs_out"] == 50
    metrics = manifest["metrics"]
    assert metrics["pii_email"] == 2 and metrics["lang_en"] == 60 and metrics["train_docs"] > 0
    texts = [
        t
        for s in ("train", "val")
        for t in pq.read_table(out / s / "shard_00000.parquet")["text"].to_pylist()
    ]
    assert not any("jane.doe@example.com" in t for t in texts) and any("<EMAIL>" in t for t in texts)
    assert not (out / "work").exists()  # scratch space is removed


def test_bad_inputs_are_reported_and_good_documents_survive(tmp_path):
    rng = random.Random(1)
    good = [english(rng) for _ in range(4)]
    corpus = tmp_path / "in"
    corpus.mkdir()
    lines = [
        json.dumps({"text": good[0]}).encode(),
        b'{"text": "unterminated',
        json.dumps({"body": good[1]}).encode(),
        b"[1, 2, 3]",
        json.dumps({"text": good[1]}).encode(),
        json.dumps({"text": good[2] + " caf"}).encode()[:-2] + b'\xff"}',
    ]
    (corpus / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (corpus / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (corpus / "empty.jsonl").write_bytes(b"")
    (corpus / "blank.txt").write_text("  \n\n\t\n", encoding="utf-8")
    (corpus / "good.md").write_text(good[3], encoding="utf-8")
    long_line = " ".join(rng.choice(WORDS) for _ in range(700_000))  # ~3.4 MB, one line
    (corpus / "long.txt").write_text(long_line, encoding="utf-8")
    out = tmp_path / "data"
    stats, _ = run_data(out, "--input", str(corpus), "--workers", "1", "--quality.max_words", "100000")
    mixed = corpus / "mixed.jsonl"
    assert stats["bad_records_by_kind"] == {
        "binary_file": 1,
        "empty_file": 1,
        "invalid_utf8": 1,
        "malformed_json": 2,
        "missing_field": 1,
    }
    bad = "\n".join(stats["bad_records"])
    for where in (f"{mixed}:2", f"{mixed}:3", f"{mixed}:4", f"{mixed}:6", str(corpus / "binary.txt")):
        assert where in bad
    assert f"{corpus / 'empty.jsonl'}: empty file" in bad
    assert sorted(output_ids(out)) == sorted(
        [f"{mixed}:1", f"{mixed}:5", f"{mixed}:6", str(corpus / "good.md")]
    )
    assert stats["drops"] == {"empty": 1, "too_many_words": 1}
    filtered = rejects(out, "filtered")
    assert filtered[str(corpus / "long.txt")]["reason"] == "too_many_words"
    assert filtered[str(corpus / "blank.txt")]["reason"] == "empty"
    assert len(rejects(out, "bad_records")) == 6 and accounted(stats)


def test_missing_or_unreadable_input_fails_before_work(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "--out", str(out), "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    (tmp_path / "broken.jsonl.gz").write_bytes(b"this is not gzip data at all")
    assert main(["data", "--out", str(out), "--input", str(tmp_path / "broken.jsonl.gz")]) == 2
    assert "broken.jsonl.gz: cannot read" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "data.partial").exists()


def test_max_docs_and_help(tmp_path, capsys):
    stats, _ = run_data(
        tmp_path / "data", "--input", "builtin:python-docs", "--max_docs", "40", "--workers", "1"
    )
    assert stats["docs_in"] == 40 and accounted(stats)
    assert main(["data", "--help"]) == 0
    shown = capsys.readouterr().out
    for key in ("--input", "--executor", "--dedup.threshold", "--quality.min_words", "--pii.", "--lang."):
        assert key in shown


def _corpus_of_small_files(root: Path, n: int) -> Path:
    rng = random.Random(2)
    for i in range(n):
        texts = [english(rng, 8), "Too short.", english(rng, 8)]
        if i % 10 == 9:
            texts.append(near_copy(rng, texts[0]))
        write_jsonl(root / f"f{i:03d}.jsonl", texts)
    return root


def test_resume_after_sigkill_skips_finished_units_and_matches(tmp_path):
    corpus = _corpus_of_small_files(tmp_path / "in", 120)
    args = [
        "--input",
        str(corpus),
        "--unit_mb",
        "0.003",
        "--rows_per_shard",
        "50",
        "--quality.min_words",
        "5",
    ]
    ref, _ = run_data(tmp_path / "ref", *args, "--workers", "2")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lmforge", "data", "--out", str(out), "--workers", "1", "-q", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = tmp_path / "killed.partial" / "work" / "units"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(units.glob("*/DONE"))) < 5:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed stage must not look finished"
    done = sorted(p.parent.name for p in units.glob("*/DONE"))
    assert 5 <= len(done) < ref["units"]
    marks = {
        u: (tmp_path / "killed.partial" / "rejects" / "filtered" / f"{u}.jsonl").stat().st_mtime_ns
        for u in done
    }
    stats, _ = run_data(out, *args, "--workers", "2")
    for unit, mtime in marks.items():  # finished units were not processed again
        assert (out / "rejects" / "filtered" / f"{unit}.jsonl").stat().st_mtime_ns == mtime
    assert stats == ref
    assert tree(out) == tree(tmp_path / "ref")


def test_ray_executor_gives_the_same_output_as_local(planted, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install lmforge[dist])")
    root, local_out, _, _ = planted
    out = tmp_path / "ray"
    run_data(out, "--input", str(root / "corpus"), "--unit_mb", "0.01", "--executor", "ray", "--workers", "2")
    assert tree(out) == tree(local_out)


def test_text_files_split_into_paragraphs_lines_or_a_regex(tmp_path: Path) -> None:
    from lmforge.data.readers import read_text

    paras = [f"Paragraph {i} says something long enough about topic {i} to be a document." for i in range(6)]
    text = (
        "\ufeff"
        + paras[0]
        + "\n\n"
        + paras[1]
        + "\n \n\n"
        + paras[2]
        + "\nstill two\n\n"
        + "\n\n".join(paras[3:])
    )
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    docs = list(read_text(path, None, "s", [], "paragraphs"))
    assert [d.text for d in docs] == [paras[0], paras[1], paras[2] + "\nstill two", *paras[3:]]
    assert [d.id for d in docs] == [f"{path}#{i}" for i in range(6)]
    assert [d.metadata["line"] for d in docs] == [1, 3, 6, 9, 11, 13]
    assert len(list(read_text(path, None, "s", [], "lines"))) == 7
    assert [d.text for d in read_text(path, None, "s", [], r"regex:\nstill two\n")][0].endswith(paras[2])
    assert [d.id for d in read_text(path, None, "s", [])] == [str(path)]  # default: the whole file
    stats, manifest = run_data(
        tmp_path / "out", "--input", f"[{path}]", "--text_split", "paragraphs", "--dedup.near", "false",
        "--quality.enabled", "false", "--lang.enabled", "false", "--val_fraction", "0.2",
    )  # fmt: skip
    assert stats["docs_in"] == 6 and stats["text_split"] == "paragraphs"
    assert main(["data", "--out", str(tmp_path / "bad"), "--text_split", "regex:(", "-q"]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_run_directory_copied_elsewhere_stays_cached(tmp_path: Path) -> None:
    """A data stage reading a file another stage of the run wrote (``@stage/file``) keys its cache on
    that file's content, not its absolute path: a copied or moved run is not re-run."""
    import shutil

    from lmforge.stages import data as data_stage

    rng = random.Random(3)
    run = tmp_path / "run"
    write_jsonl(run / "split" / "text.jsonl", [english(rng) for _ in range(6)])
    (run / "split" / "manifest.json").write_text(json.dumps({"status": "complete", "outputs": {}}))
    first = data_stage.main(data_stage.Config(input=["@split/text.jsonl"], out=str(run / "data")))
    assert not first["cached_last"] and "input[0]" in first["inputs"]
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    again = data_stage.main(data_stage.Config(input=["@split/text.jsonl"], out=str(moved / "data")))
    assert again["cached_last"]
    write_jsonl(moved / "split" / "text.jsonl", [english(rng) for _ in range(6)])  # new content: re-run
    (moved / "split" / "manifest.json").write_text(
        json.dumps({"status": "complete", "outputs": {"text.jsonl": {"sha256": "x"}}})
    )
    rerun = data_stage.main(data_stage.Config(input=["@split/text.jsonl"], out=str(moved / "data")))
    assert not rerun["cached_last"]
