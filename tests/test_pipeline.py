"""The walking skeleton through the run store: real stages on real text, caching, partial re-runs, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.log import read_metrics

ROOT = Path(__file__).resolve().parents[1]

# a small but real recipe: ~120 documents of the Python docs, a 2-layer model, a few dozen steps
TINY = """
name: micro
stages:
  data:
    input: [builtin:python-docs]
    max_docs: 120
    val_fraction: 0.1
  tokenizer:
    vocab_size: 512
  pretrain:
    model: {n_layer: 2, n_head: 2, n_embd: 64, block_size: 64}
    batch_size: 8
    max_steps: 30
    warmup_steps: 5
    eval_every: 10
    ckpt_every: 10
    eval_tokens: 4096
    lr: 3.0e-3
    device: cpu
  eval: {max_tokens: 8192, device: cpu}
  generate: {prompts: ["The "], max_new_tokens: 8, device: cpu}
  report: {}
"""


def run(recipe: Path, out: Path, *overrides: str) -> dict[str, dict]:
    assert main(["run", str(recipe), "--out", str(out), "-q", *overrides]) == 0
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/manifest.json")}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    recipe = base / "micro.yaml"
    recipe.write_text(TINY)
    out = base / "run"
    first = run(recipe, out)
    return recipe, out, first


def test_every_stage_completes_with_lineage(micro_run):
    recipe, out, m = micro_run
    assert set(m) == {"data", "tokenizer", "pretrain", "eval", "generate", "report"}
    assert all(x["status"] == "complete" and not x["cached_last"] for x in m.values())
    assert m["tokenizer"]["inputs"]["data"]["hash"]
    assert m["pretrain"]["config"]["model"]["n_embd"] == 64
    pm = m["pretrain"]["metrics"]
    assert (pm["steps"], pm["steps_planned"], pm["stopped_by_time_budget"]) == (30, 30, 0)
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert (out / "pretrain" / "metrics.jsonl").is_file()
    run_record = json.loads((out / "run.json").read_text())
    assert [s["instance"] for s in run_record["stages"]][:3] == ["data", "tokenizer", "pretrain"]
    samples = (out / "generate" / "samples.jsonl").read_text().splitlines()
    assert json.loads(samples[0])["prompt"] == "The "
    ckpt = out / "pretrain" / "ckpt"
    final = json.loads((ckpt / "final.json").read_text())
    assert (ckpt / final["best"] / "DONE").is_file()
    assert m["eval"]["metrics"]["val_loss"] < m["eval"]["metrics"]["unigram_loss"] + 1.0


def test_training_writes_tensorboard_events_equal_to_its_metrics(micro_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, m = micro_run
    rows = [r for r in read_metrics(out / "pretrain" / "metrics.jsonl") if "loss" in r]
    events = EventAccumulator(str(out / "pretrain" / "tb"))
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [r["step"] for r in rows] == list(range(1, 31))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.step for e in events.Scalars("val_loss")] == [10, 20, 30]
    assert not any(k.startswith("tb/") for k in m["pretrain"]["outputs"])  # a record, not a product


def test_second_run_is_cached(micro_run):
    recipe, out, _ = micro_run
    m = run(recipe, out)
    assert all(x["cached_last"] for x in m.values()), {k: v["cached_last"] for k, v in m.items()}


def test_dry_run_plans_without_running_or_writing(micro_run, capsys, tmp_path):
    from lmforge.config import from_dict
    from lmforge.stages import run as run_stage

    recipe, out, _ = micro_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["run", str(recipe), "--out", str(out), "--dry_run", "generate.temperature=0.5"]) == 0
    assert "2 of 6 stages would run, 4 are cached" in capsys.readouterr().out
    cfg = from_dict(run_stage.Config, {"recipe": str(recipe), "out": str(out), "dry_run": True})
    plan = {e["instance"]: e for e in run_stage.main(cfg, {"pretrain": {"lr": 2e-3}})}
    assert {k for k, e in plan.items() if e["status"] != "cached"} == {
        "pretrain",
        "eval",
        "generate",
        "report",
    }
    assert plan["pretrain"]["why"] == "its config, inputs or code changed"
    assert plan["eval"]["why"].startswith("after pretrain")
    assert plan["tokenizer"]["inputs"] == ["data=@data"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written or touched
    fresh = tmp_path / "fresh"
    assert main(["run", str(recipe), "--out", str(fresh), "--dry_run", "-q"]) == 0
    assert "6 of 6 stages would run" in capsys.readouterr().out
    assert not fresh.exists()


def test_changing_one_value_reruns_it_and_downstream_only(micro_run):
    recipe, out, _ = micro_run
    m = run(recipe, out, "generate.temperature=0.5")
    assert {k for k, v in m.items() if not v["cached_last"]} == {"generate", "report"}
    m = run(recipe, out, "generate.temperature=0.5", "pretrain.lr=2e-3")
    assert {k for k, v in m.items() if not v["cached_last"]} == {"pretrain", "eval", "generate", "report"}
    assert m["pretrain"]["config"]["lr"] == pytest.approx(2e-3)


def test_stage_runs_alone_from_the_cli(micro_run, tmp_path):
    _, out, m = micro_run
    assert (
        main(
            [
                "eval",
                f"--model={out / 'pretrain'}",
                f"--tokenizer={out / 'tokenizer'}",
                f"--out={tmp_path / 'eval'}",
                "--max_tokens",
                "2048",
                "-q",
            ]
        )
        == 0
    )
    got = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert got["metrics"]["val_tokens"] == 2048


def test_one_off_generate_prints_and_eval_uses_the_checkpoints_tokenizer(
    micro_run, tmp_path, capsys, monkeypatch
):
    _, out, _ = micro_run
    monkeypatch.chdir(tmp_path)
    ckpt = str(out / "pretrain")
    assert (
        main(["generate", "--model", ckpt, "--prompts", "[The , def ]", "--max_new_tokens", "5", "-q"]) == 0
    )
    printed = capsys.readouterr().out
    assert "--- sample 0" in printed and "--- sample 1" in printed and "printed" in printed
    assert list(tmp_path.iterdir()) == []  # nothing written without --out
    text = tmp_path / "t.txt"
    text.write_text("The Python tutorial explains lists, dictionaries and classes.\n")
    assert main(["eval", "--model", ckpt, "--text", f"[{text}]", "--out", str(tmp_path / "e"), "-q"]) == 0
    metrics = json.loads((tmp_path / "e" / "manifest.json").read_text())["metrics"]
    assert metrics["t_tokens"] > 0 and "val_loss" not in metrics  # no run beside it: no split metrics
    assert main(["eval", "--model", ckpt, "--out", str(tmp_path / "e2"), "-q"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err and not (tmp_path / "e2").exists()


def _pretrain_cmd(out: Path, tok: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lmforge",
        "pretrain",
        f"--out={out}",
        f"--tokenizer={tok}",
        "--model.n_layer=2",
        "--model.n_head=2",
        "--model.n_embd=64",
        "--model.block_size=64",
        "--model.dropout=0.1",
        "--batch_size=8",
        f"--max_steps={steps}",
        "--warmup_steps=5",
        "--eval_every=1000",
        "--ckpt_every=5",
        "--eval_tokens=4096",
        "--device=cpu",
        "--threads=1",
        "-q",
    ]


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(micro_run, tmp_path):
    """Kill pretraining with SIGKILL after a checkpoint; the resumed run ends with the same loss, bit for bit."""
    _, out, _ = micro_run
    tok = out / "tokenizer"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    ref = tmp_path / "ref"
    subprocess.run(_pretrain_cmd(ref, tok, 40), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _pretrain_cmd(killed, tok, 40), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    partial = tmp_path / "killed.partial" / "ckpt"
    deadline = time.time() + 900  # generous: on a loaded machine 15 steps can take minutes
    while time.time() < deadline and proc.poll() is None and not any(partial.glob("step_1[05]/DONE")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before a checkpoint was seen: nothing to kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists(), "a killed stage must not look finished"
    assert any(partial.glob("step_*/DONE"))
    subprocess.run(_pretrain_cmd(killed, tok, 40), check=True, env=env, capture_output=True)
    a = json.loads((ref / "manifest.json").read_text())["metrics"]
    b = json.loads((killed / "manifest.json").read_text())["metrics"]
    assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"]
    rows = lambda d: [(r.get("step"), sorted(r)) for r in read_metrics(d / "metrics.jsonl")]  # noqa: E731
    assert rows(killed) == rows(ref)  # one row per step: the replayed steps are not appended twice


@pytest.mark.parametrize("objective", ["mlm", "mlm+nsp"])
def test_masked_objectives_train_an_encoder(micro_run, tmp_path, objective):
    _, out, _ = micro_run
    dest = tmp_path / objective
    assert (
        main(
            [
                "pretrain",
                f"--tokenizer={out / 'tokenizer'}",
                f"--out={dest}",
                f"--objective={objective}",
                "--model.n_layer=2",
                "--model.n_head=2",
                "--model.n_embd=64",
                "--model.block_size=64",
                "--batch_size=8",
                "--max_steps=40",
                "--warmup_steps=5",
                "--lr=3e-3",
                "--eval_every=20",
                "--ckpt_every=20",
                "--eval_tokens=4096",
                "--device=cpu",
                "-q",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (dest / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    assert vals[-1] < vals[0] or len(vals) == 1
    from lmforge.model.checkpoint import load_model, resolve_checkpoint
    from lmforge.model.heads import EncoderForPretraining

    model, cfg = load_model(resolve_checkpoint(dest, "last"))
    assert cfg.arch == "encoder" and isinstance(model, EncoderForPretraining)
    assert (model.nsp_head is not None) == (objective == "mlm+nsp")


def test_muon_and_l1_train_and_their_state_reloads(micro_run, tmp_path):
    """optimizer=muon (Muon for block matrices + AdamW) with an L1 penalty trains, and the checkpointed
    state of both optimisers loads back into fresh ones (what a resume does)."""
    _, out, _ = micro_run
    assert (
        main(
            [
                "pretrain",
                f"--tokenizer={out / 'tokenizer'}",
                "--optimizer=muon",
                "--muon_lr=6e-3",
                "--eval_stride=16",
                "--l1=1e-5",
                "--model.n_layer=2",
                "--model.n_head=2",
                "--model.n_embd=64",
                "--model.block_size=64",
                "--batch_size=8",
                "--warmup_steps=2",
                "--lr=3e-3",
                "--eval_every=10",
                "--ckpt_every=10",
                "--eval_tokens=2048",
                "--device=cpu",
                "--max_steps=20",
                f"--out={tmp_path / 'a'}",
                "-q",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    metrics = json.loads((tmp_path / "a" / "manifest.json").read_text())["metrics"]
    # sliding windows (each target with >= 48 tokens of context) score the same targets no worse
    assert math.isfinite(metrics["val_bpb_sliding"]) and math.isfinite(metrics["val_loss_sliding"])
    assert metrics["val_loss_sliding"] < metrics["val_loss"] + 0.05

    from lmforge.model import checkpoint as ckpt
    from lmforge.training import distributed as ddp
    from lmforge.training.checkpoint import load_train_state
    from lmforge.training.optim import build_optimizers

    last = ckpt.resolve_checkpoint(tmp_path / "a", "last")
    model, cfg = ckpt.load_model(last)
    optimizers = build_optimizers(model, "muon", 3e-3, 0.1)
    state = load_train_state(last)
    ddp.load_full_state_dicts(model, optimizers, ckpt.load_weights(last, cfg), state["optimizer"])
    muon_state = optimizers[0].state_dict()["state"]
    assert len(muon_state) > 0 and all("momentum_buffer" in v for v in muon_state.values())


def test_schedule_clock_time_follows_the_budget():
    """schedule_clock=time: the schedule spans the steps projected to fit in max_time_s from the recent
    step time, so a slow (or suddenly slower) machine still decays to min_lr at the budget."""
    from lmforge.errors import ConfigError
    from lmforge.stages.pretrain import Config, _schedule_length

    steps = Config(max_steps=1000, max_time_s=100.0, warmup_steps=5)
    timed = Config(max_steps=1000, max_time_s=100.0, warmup_steps=5, schedule_clock="time")
    assert _schedule_length(steps, 10, elapsed=50.0, step_time=0.5) == 1000
    assert _schedule_length(timed, 10, elapsed=50.0, step_time=None) == 1000  # no step time yet
    assert _schedule_length(timed, 10, elapsed=50.0, step_time=0.5) == 110  # 10 done + 50 s / 0.5 s
    assert _schedule_length(timed, 10, elapsed=50.0, step_time=0.01) == 1000  # capped at max_steps
    assert _schedule_length(timed, 10, elapsed=120.0, step_time=0.5) == 11  # over budget: ends now
    assert _schedule_length(timed, 2, elapsed=99.0, step_time=0.5) == 5  # never inside the warmup
    with pytest.raises(ConfigError, match="max_time_s"):  # no budget: the clock has nothing to follow
        Config(max_steps=1000, schedule_clock="time").validate()
