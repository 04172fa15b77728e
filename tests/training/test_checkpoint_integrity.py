"""Checkpoint integrity: the completion marker records every file's size and sha256; a truncated,
emptied, bit-flipped or poisoned file in the newest checkpoint makes a resume fall back to the newest
intact one with a warning naming the file; later stages get one clear error; old markers still load;
metrics.jsonl keeps one row per step across a resume."""

from __future__ import annotations

import json
import logging
import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmforge.config import from_dict
from lmforge.errors import InputError, UnsafePickleError
from lmforge.log import read_metrics, truncate_metrics
from lmforge.model.checkpoint import (
    DONE_FILE,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    checkpoint_dir,
    load_model,
    save_checkpoint,
    verify_checkpoint,
)
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.report.collect import read_jsonl
from lmforge.runstore import StageContext, run_stage, sha256_file
from lmforge.stages import pretrain
from lmforge.tokenizer.shards import encode_to_shards
from lmforge.tokenizer.train import save_tokenizer, train_bpe
from lmforge.training.checkpoint import load_resumable, load_train_state, prune_checkpoints

CFG = ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)


def _save(root: Path, step: int) -> Path:
    torch.manual_seed(step)
    model = Decoder(CFG)
    return save_checkpoint(checkpoint_dir(root, step), model, CFG, train_state={"step": step})


def _rerecord(dir: Path) -> None:
    """Write the marker again for the files as they are now (a marker that matches a tampered file)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(dir.iterdir())
        if p.name != DONE_FILE
    }
    (dir / DONE_FILE).write_text(json.dumps({"format": 2, "files": files}))


def _flip_tensor_byte(path: Path) -> None:
    """Flip one bit of the tensor data (after the safetensors header), leaving the size unchanged."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 + header_len + 5] ^= 0x01
    path.write_bytes(bytes(data))


class Evil:
    """Unpickling it would call os.system; weights_only loading must refuse it without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poison(path: Path, marker: Path) -> None:
    torch.save({"step": 1, "payload": Evil(marker)}, path)


DAMAGE = {
    "truncated train_state.pt": (TRAIN_STATE_FILE, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "size mismatch"),
    "emptied model.safetensors": (MODEL_FILE, lambda p: p.write_bytes(b""), "size mismatch"),
    "bit-flipped model.safetensors": (MODEL_FILE, _flip_tensor_byte, "checksum mismatch"),
    "missing model.safetensors": (MODEL_FILE, lambda p: p.unlink(), "missing"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path: Path, caplog, case: str) -> None:
    for step in (5, 10):
        _save(tmp_path, step)
    name, damage, reason = DAMAGE[case]
    damage(tmp_path / "step_10" / name)
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        dir, weights, state = load_resumable(tmp_path, CFG)
    assert dir.name == "step_5" and state["step"] == 5
    assert torch.equal(weights["tok_emb.weight"], load_model(dir)[0].tok_emb.weight)
    warning = caplog.text
    assert "step_10" in warning and f"{name}: {reason}" in warning and "step_10.rejected" in warning
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10.rejected", "step_5"]


def test_every_checkpoint_damaged_starts_from_scratch_with_a_warning(tmp_path: Path, caplog) -> None:
    for step in (5, 10):
        (_save(tmp_path, step) / MODEL_FILE).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        assert load_resumable(tmp_path, CFG) is None
    assert "no intact checkpoint" in caplog.text and "step 0" in caplog.text
    assert load_resumable(tmp_path / "nothing", CFG) is None  # a first start says nothing


def test_a_poisoned_train_state_is_refused_never_run(tmp_path: Path, caplog) -> None:
    for step in (5, 10):
        _save(tmp_path, step)
    ran = tmp_path / "ran"
    newest = tmp_path / "step_10"
    _poison(newest / TRAIN_STATE_FILE, ran)
    with pytest.raises(InputError, match="checksum mismatch|size mismatch"):
        verify_checkpoint(newest)  # a swapped-in file no longer matches the marker
    _rerecord(newest)  # a marker rewritten to match (or an old marker without checksums)
    with pytest.raises(
        UnsafePickleError, match=r"train_state.pt: refused: .*GLOBAL posix.system.*safetensors"
    ):
        load_train_state(newest)
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        dir, _, _ = load_resumable(tmp_path, CFG)
    assert dir.name == "step_5"
    assert "refused to resume from step_10" in caplog.text and TRAIN_STATE_FILE in caplog.text
    assert not ran.exists()


def test_old_markers_without_checksums_still_load(tmp_path: Path, caplog) -> None:
    dir = _save(tmp_path, 3)
    (dir / DONE_FILE).write_text("complete\n")  # what checkpoints held before checksums
    with caplog.at_level(logging.DEBUG, logger="lmforge"):
        model, _ = load_model(dir)
        found = load_resumable(tmp_path, CFG)
    assert found is not None and found[0] == dir and found[2]["step"] == 3
    assert "records no checksums" in caplog.text and "not verified" in caplog.text
    (dir / DONE_FILE).write_text('{"format": 2, "fil')  # but a damaged marker is an error
    with pytest.raises(InputError, match="DONE: unreadable completion marker"):
        verify_checkpoint(dir)
    escape = {"format": 2, "files": {"../outside": {"bytes": 1, "sha256": "0" * 64}}}
    (dir / DONE_FILE).write_text(json.dumps(escape))  # names only files inside the checkpoint
    with pytest.raises(InputError, match="not a file of the checkpoint directory"):
        verify_checkpoint(dir)


def test_a_damaged_final_checkpoint_names_the_file_and_the_stage_to_rerun(tmp_path: Path) -> None:
    stage = tmp_path / "run" / "pretrain"
    dir = _save(stage / "ckpt", 7)
    (stage / "manifest.json").write_text(
        json.dumps({"stage": "pretrain", "instance": "pretrain", "status": "complete"})
    )
    _flip_tensor_byte(dir / MODEL_FILE)
    with pytest.raises(InputError) as info:
        load_model(dir)
    message = str(info.value)
    assert "step_7" in message and "model.safetensors: checksum mismatch" in message
    assert "re-run stage 'pretrain'" in message and "--force --only pretrain" in message
    _save(stage / "ckpt", 7)
    (dir / TRAIN_STATE_FILE).write_bytes(b"")
    load_model(dir)  # later stages never read train_state.pt, so they do not need it intact


def test_a_finetunes_head_files_are_recorded_and_verified(tmp_path: Path) -> None:
    """heads.safetensors and finetune.json are written before the marker, so damage to them is caught."""
    from torch import nn

    from lmforge.model.checkpoint import HEADS_FILE, META_FILE
    from lmforge.model.heads import ClassificationHead
    from lmforge.training.finetune import load_heads, save_finetuned

    dir = tmp_path / "step_3"
    heads = nn.ModuleDict({"t": ClassificationHead(CFG, 2, "mean")})
    meta = {"labels": {"t": ["a", "b"]}, "pooling": "mean"}
    save_finetuned(dir, Decoder(CFG), CFG, tokenizer_path=None, heads=heads, meta=meta)
    recorded = json.loads((dir / DONE_FILE).read_text())["files"]
    assert {HEADS_FILE, META_FILE} <= set(recorded)
    loaded, loaded_meta = load_heads(dir, CFG)
    assert loaded_meta["labels"] == meta["labels"]
    torch.testing.assert_close(loaded["t"].out_proj.weight, heads["t"].out_proj.weight)
    _flip_tensor_byte(dir / HEADS_FILE)
    with pytest.raises(InputError, match="heads.safetensors: checksum mismatch"):
        load_model(dir)


def test_pruning_after_a_fallback_keeps_the_intact_checkpoint(tmp_path: Path) -> None:
    """Newer damaged checkpoints are moved aside, so keep_last=1 cannot keep one of them instead."""
    for step in (5, 10, 15):
        _save(tmp_path, step)
    for step in (10, 15):
        (tmp_path / f"step_{step}" / MODEL_FILE).write_bytes(b"")
    assert load_resumable(tmp_path, CFG)[0].name == "step_5"
    _save(tmp_path, 10)  # the resumed run's next checkpoint
    prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_10.rejected", "step_15.rejected"]
    verify_checkpoint(tmp_path / "step_10")


def test_truncate_metrics_keeps_one_row_per_step_and_drops_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 7)] + [{"step": 4, "val_loss": 2.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"final": true}\n{"step": 7, "lo')
    assert read_metrics(path)[-1] == {"final": True} and len(read_jsonl(path)) == 8  # torn line skipped
    assert truncate_metrics(path, 4) == 4  # steps 5 and 6, the final row and the torn line
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 4]
    assert path.read_text().endswith("}\n") and not (tmp_path / "metrics.jsonl.tmp").exists()
    assert truncate_metrics(tmp_path / "missing.jsonl", 3) == 0 and not (tmp_path / "missing.jsonl").exists()


# --------------------------------------------------------------------------------------------------
# the pretrain stage: interrupted, newest checkpoint damaged, torn metrics line → resumed exactly

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no list of files open read".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A finished tokenizer stage directory (tokenizer.json, tokens/{train,val})."""
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(40)]
    run = tmp_path_factory.mktemp("run")

    @dataclass
    class Nothing:
        pass

    def work(cfg, ctx):
        save_tokenizer(train_bpe(docs, vocab_size=300), ctx.dir)
        encode_to_shards(docs[:34], ctx.dir / "tokenizer.json", ctx.dir / "tokens" / "train", workers=1)
        encode_to_shards(docs[34:], ctx.dir / "tokenizer.json", ctx.dir / "tokens" / "val", workers=1)
        return {}

    run_stage("tokenizer", Nothing(), out=run / "tokenizer", inputs={}, work=work)
    return run / "tokenizer"


def _pretrain(tokenizer: Path, out: Path) -> dict:
    options = {
        "tokenizer": str(tokenizer),
        "out": str(out),
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.1},
        "batch_size": 4,
        "max_steps": 12,
        "warmup_steps": 2,
        "eval_every": 4,
        "ckpt_every": 4,
        "keep_last": 2,
        "eval_tokens": 256,
        "device": "cpu",
        "threads": 1,
    }
    return pretrain.main(from_dict(pretrain.Config, options))


def test_pretrain_resumes_past_a_damaged_checkpoint_with_one_metrics_row_per_step(
    tokenizer: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    ref = _pretrain(tokenizer, tmp_path / "ref")

    log_metrics = StageContext.log_metrics

    def dies_at_step_10(self, record):
        log_metrics(self, record)
        if record.get("step") == 10 and "loss" in record:
            raise KeyboardInterrupt  # as a kill right after step 10's row was written

    monkeypatch.setattr(StageContext, "log_metrics", dies_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(tokenizer, tmp_path / "killed")
    monkeypatch.undo()
    partial = tmp_path / "killed.partial"
    assert sorted(p.name for p in (partial / "ckpt").iterdir()) == ["step_4", "step_8"]
    _flip_tensor_byte(partial / "ckpt" / "step_8" / MODEL_FILE)
    with (partial / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 11, "loss": 3.')  # torn by the kill

    with caplog.at_level(logging.WARNING, logger="lmforge"):
        resumed = _pretrain(tokenizer, tmp_path / "killed")
    assert (
        "cannot resume from step_8" in caplog.text and "model.safetensors: checksum mismatch" in caplog.text
    )
    steps = lambda d: [(r.get("step"), sorted(r)) for r in read_metrics(d / "metrics.jsonl")]  # noqa: E731
    killed = tmp_path / "killed"
    assert steps(killed) == steps(tmp_path / "ref")
    train_rows = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
    assert train_rows == list(range(1, 13))
    loss = lambda d: [r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert loss(killed) == loss(tmp_path / "ref")  # resumed from step 4: exactly the same trajectory
    assert resumed["metrics"]["val_loss"] == ref["metrics"]["val_loss"]
    assert (killed / "ckpt" / "step_8.rejected").is_dir()


def test_truncate_metrics_rebuilds_the_tensorboard_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmforge.log import MetricsWriter

    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for step in range(1, 11):
        writer.write({"step": step, "loss": 10.0 - step, "lr": 0.1})
    writer.close()
    truncate_metrics(tmp_path / "metrics.jsonl", 5)
    resumed = MetricsWriter(tmp_path / "metrics.jsonl")  # the resumed run writes steps 6.. again
    for step in range(6, 8):
        resumed.write({"step": step, "loss": 1.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(s, 10.0 - s) for s in range(1, 6)] + [
        (6, 1.0),
        (7, 1.0),
    ]
