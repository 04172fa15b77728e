"""Predict the loss of a larger configuration from a scaling fit, then (the check) train it and compare.

Reads the fit's ``fit.json``, computes N of the held-out size with the sweep's recipe and tokenizer,
predicts L(N, D) with its bootstrap interval, and with ``train`` (the default) trains that point
through the same cached point store as the sweep and reports the relative prediction error
``|predicted − measured| / measured``. The manifest repeats the fit's ``alpha`` and ``beta`` so one
manifest holds the headline numbers of the whole study.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, run_config, write_json_atomic

log = logging.getLogger(__name__)

STAGE = "scaling.predict"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge scaling predict``."""

    fit: str = opt("@fit", "the scaling fit stage directory (fit.json)", path=True)
    out: str = opt("", "output stage directory (prediction.json)", path=True)
    size: str = opt("4x160", "the held-out model: LAYERSxWIDTH, or a depth")
    tokens: int = opt(0, "its token budget D (0 = the sweep's largest budget)")
    train: bool = opt(True, "train the held-out model and report the prediction error (the check)")

    def validate(self) -> None:
        from lmforge.scaling.points import parse_size

        parse_size(self.size)
        if self.tokens < 0:
            raise ConfigError("tokens", f"must be >= 0 (0 = the sweep's largest), got {self.tokens}")


INPUTS = ("fit",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Predict (and check) or return the cached result; returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, predict, version=VERSION, force=force)


def predict(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Predict the held-out loss and, with ``train``, measure it; writes ``prediction.json``."""
    import json

    from lmforge.config import from_dict
    from lmforge.scaling import analysis
    from lmforge.scaling.points import (
        PointRecipe,
        model_config,
        non_embedding_params,
        parse_size,
        run_point,
        tokenizer_vocab,
    )

    result = json.loads((ctx.inputs["fit"] / "fit.json").read_text(encoding="utf-8"))
    recipe = from_dict(PointRecipe, result["recipe"])
    tokenizer = Path(result["tokenizer"])
    n_layer, n_embd = parse_size(cfg.size)
    n_params = non_embedding_params(model_config(n_layer, n_embd, recipe, tokenizer_vocab(tokenizer)))
    budget = cfg.tokens or max(p["budget"] for p in result["points"])
    step_tokens = recipe.batch_size * recipe.block_size
    tokens = max(1, math.ceil(budget / step_tokens)) * step_tokens  # what training will actually see
    largest = max(p["n_params"] for p in result["points"])
    if n_params <= largest:
        log.warning(
            "held-out N=%d is not larger than the sweep's largest (%d): this is interpolation",
            n_params,
            largest,
        )
    predicted, low, high = analysis.predict(result, n_params, tokens)
    log.info(
        "predicted val loss of %s (N=%d, D=%d): %.4f [%.4f, %.4f]",
        cfg.size,
        n_params,
        tokens,
        predicted,
        low,
        high,
    )
    record: dict[str, Any] = {
        "size": cfg.size,
        "n_params": n_params,
        "tokens": tokens,
        "flops": 6.0 * n_params * tokens,
        "predicted_loss": predicted,
        "interval": [low, high],
        "level": result.get("level", 0.95),
        "extrapolation_n": n_params / largest,
    }
    metrics: dict[str, float] = {
        "predicted_loss": predicted,
        "predicted_low": low,
        "predicted_high": high,
        "n_params": n_params,
        "tokens": tokens,
        "alpha": float(result["chinchilla"]["alpha"]),
        "beta": float(result["chinchilla"]["beta"]),
    }
    if cfg.train:
        manifest = run_point(tokenizer, Path(result["points_dir"]), n_layer, n_embd, budget, recipe)
        measured = float(manifest["metrics"]["val_loss"])
        error = abs(predicted - measured) / measured
        record.update(
            measured_loss=measured, measured_bpb=manifest["metrics"]["val_bpb"], prediction_error=error
        )
        metrics.update(
            measured_loss=measured,
            prediction_error=error,
            signed_error=(predicted - measured) / measured,
            in_interval=int(low <= measured <= high),
        )
        log.info("measured %.4f: relative prediction error %.2f%%", measured, 100 * error)
    write_json_atomic(ctx.dir / "prediction.json", record)
    return metrics
