"""Data source ``task:``: an eval task's training split as pretraining text, never its test split."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.cli import main
from lmforge.data.sources import fingerprint, iter_documents, resolve_sources
from lmforge.errors import InputError
from lmforge.eval.corpus import TASK_SOURCE

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _task(root: Path) -> Path:
    train = [{"en": f"a red {w}", "answer": f"un {w} rouge"} for w in ("car", "hat", "cup")]
    test = [{"en": "a blue secret", "answer": "un secret bleu"}]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train + train[:1]))
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    (root / "t.yaml").write_text(
        'kind: generation\npath: test.jsonl\nfewshot_path: train.jsonl\ntemplate: "English: {en}\\nFrench:"\n'
    )
    return root / "t.yaml"


def test_a_yaml_tasks_training_examples_become_documents_and_its_test_split_does_not(tmp_path: Path) -> None:
    spec = _task(tmp_path)
    [source] = resolve_sources([f"task:{spec}"], tasks=TASK_SOURCE)
    texts = [d.text for d in iter_documents(source)]
    assert texts == [f"English: a red {w}\nFrench: un {w} rouge" for w in ("car", "hat", "cup")]  # once each
    assert not any("secret" in t for t in texts)
    before = fingerprint(source)
    (tmp_path / "train.jsonl").write_text(
        (tmp_path / "train.jsonl").read_text() + json.dumps({"en": "x", "answer": "y"})
    )
    assert fingerprint(source) != before  # a changed data file re-runs the data stage


def test_the_data_stage_reads_a_task_source(tmp_path: Path) -> None:
    spec = _task(tmp_path)
    out = tmp_path / "data"
    args = ["data", "--out", str(out), "--input", f"[task:{spec}]", "-q"]
    args += ["--quality.enabled", "false", "--lang.enabled", "false", "--dedup.near", "false"]
    assert main(args) == 0
    texts = [t for f in sorted(out.glob("*/*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    assert sorted(texts) == sorted(f"English: a red {w}\nFrench: un {w} rouge" for w in ("car", "hat", "cup"))


def test_bad_task_sources_fail_before_work(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        resolve_sources(
            ["task:nope@.", "task:squad", f"task:squad@{tmp_path / 'missing'}", "task:x.yaml"],
            tasks=TASK_SOURCE,
        )
    msg = str(e.value)
    assert "unknown task 'nope'" in msg and "task:squad@DIR" in msg and "no such directory" in msg
    assert "no such task file" in msg


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)")
def test_squad_gives_each_training_passage_once_and_no_test_passage() -> None:
    from lmforge.eval.tasks import load_task

    [source] = resolve_sources([f"task:squad@{SHARED}"], tasks=TASK_SOURCE)
    passages = [d.text for d in iter_documents(source)]
    task = load_task("squad", data_dir=SHARED)
    assert len(passages) == len(set(passages)) == len({d.fields["context"] for d in task.fewshot_pool})
    assert not {d.fields["context"] for d in task.docs} & set(passages)


def test_a_task_source_without_a_reader_is_refused_before_work(tmp_path: Path) -> None:
    spec = _task(tmp_path)
    with pytest.raises(InputError, match="no task reader"):
        resolve_sources([f"task:{spec}"])
