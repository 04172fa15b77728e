"""``lmforge scaling sweep|fit|predict`` on a tiny corpus: points go through the run store (a second
sweep trains nothing, a grown grid trains only the new points), the fit and the held-out check land in
their manifests, and the CLI dispatches methods."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmforge.cli import main as lmforge_main
from lmforge.config import from_dict
from lmforge.stages.scaling import fit, predict, sweep

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no list of files open read".split()
RECIPE = {"block_size": 16, "batch_size": 4, "eval_tokens": 512, "threads": 1, "lr": 1e-2, "head_dim": 8}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A finished tokenizer stage directory (tokenizer.json, tokens/{train,val}) of a run."""
    from lmforge.runstore import run_stage
    from lmforge.tokenizer.shards import encode_to_shards
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(80)]
    run = tmp_path_factory.mktemp("run")

    def work(cfg, ctx):
        save_tokenizer(train_bpe(docs, vocab_size=300), ctx.dir)
        encode_to_shards(docs[:70], ctx.dir / "tokenizer.json", ctx.dir / "tokens" / "train", workers=1)
        encode_to_shards(docs[70:], ctx.dir / "tokenizer.json", ctx.dir / "tokens" / "val", workers=1)
        return {}

    from dataclasses import dataclass

    @dataclass
    class Nothing:
        pass

    run_stage("tokenizer", Nothing(), out=run / "tokenizer", inputs={}, work=work)
    return run / "tokenizer"


def _sweep_cfg(tokenizer: Path, out: Path, sizes: list[str]) -> sweep.Config:
    return from_dict(
        sweep.Config,
        {
            "tokenizer": str(tokenizer),
            "out": str(out),
            "sizes": sizes,
            "tokens": [256, 512],
            "recipe": RECIPE,
        },
    )


def test_sweep_caches_points_and_fit_predict_report_manifests(tokenizer: Path):
    run = tokenizer.parent
    first = sweep.main(_sweep_cfg(tokenizer, run / "sweep", ["1x16", "1x32", "2x32"]))
    assert first["metrics"]["points"] == 6 and first["metrics"]["trained"] == 6
    points = json.loads((run / "sweep" / "points.json").read_text())["points"]
    assert all(p["flops"] == 6 * p["n_params"] * p["tokens"] for p in points)
    assert len({p["n_params"] for p in points}) == 3 and len(list((run / "scaling-points").iterdir())) == 6
    point = json.loads(next((run / "scaling-points").iterdir()).joinpath("manifest.json").read_text())
    assert point["stage"] == "scaling.point" and point["cpu_s"] > 0

    again = sweep.main(_sweep_cfg(tokenizer, run / "sweep", ["1x16", "1x32", "2x32"]), force=True)
    assert again["metrics"]["trained"] == 0 and again["metrics"]["cached"] == 6
    grown = sweep.main(_sweep_cfg(tokenizer, run / "sweep", ["1x16", "1x32", "2x32", "2x48"]))
    assert grown["metrics"]["trained"] == 2 and grown["metrics"]["cached"] == 6

    f = fit.main(
        from_dict(fit.Config, {"sweep": "@sweep", "out": str(run / "fit"), "bootstrap": 10, "starts": 4})
    )
    assert {"alpha", "beta", "E", "alpha_low", "alpha_high", "fit_rel_rmse"} <= set(f["metrics"])
    assert (run / "fit" / "scaling_compute.png").stat().st_size > 1000
    assert (run / "fit" / "scaling_isoflop.png").stat().st_size > 1000

    p = predict.main(from_dict(predict.Config, {"fit": "@fit", "out": str(run / "predict"), "size": "2x64"}))
    m = p["metrics"]
    assert {"alpha", "beta", "prediction_error", "predicted_loss", "measured_loss"} <= set(m)
    assert m["prediction_error"] == pytest.approx(
        abs(m["predicted_loss"] - m["measured_loss"]) / m["measured_loss"]
    )
    assert m["tokens"] == 512 and m["alpha"] == f["metrics"]["alpha"]


def test_cli_lists_methods_and_rejects_unknown(capsys):
    assert lmforge_main(["scaling", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {m} " in out for m in ("sweep", "fit", "predict"))
    assert (
        lmforge_main(["scaling", "swep"]) == 2 and "did you mean 'sweep'" in capsys.readouterr().err.lower()
    )


def test_bad_sizes_are_config_errors(tokenizer: Path):
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="sizes"):
        _sweep_cfg(tokenizer, tokenizer.parent / "bad", ["2xwide"])
    with pytest.raises(ConfigError, match="head_dim"):
        _sweep_cfg(tokenizer, tokenizer.parent / "bad", ["1x36"])
