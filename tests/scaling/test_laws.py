"""Scaling-law fits recover known laws: Chinchilla exponents from synthetic points (with bootstrap
intervals that cover them), Kaplan power laws exactly, the compute-optimal allocation, the frontier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmforge.scaling.analysis import analyse, predict
from lmforge.scaling.laws import (
    ChinchillaLaw,
    bootstrap_chinchilla,
    fit_chinchilla,
    fit_power_law,
    frontier,
    interval,
)

TRUE = ChinchillaLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)  # Hoffmann et al.'s fit


def _synthetic(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = np.repeat(np.geomspace(1e5, 1e8, 5), 5)
    d = np.tile(np.geomspace(1e6, 1e10, 5), 5)
    rng = np.random.default_rng(seed)
    return n, d, TRUE.loss(n, d) * np.exp(rng.normal(0.0, noise, n.size))


def test_chinchilla_fit_recovers_exponents_and_intervals_cover_them():
    n, d, loss = _synthetic(noise=0.005)
    fit = fit_chinchilla(n, d, loss)
    assert fit.law.alpha == pytest.approx(TRUE.alpha, abs=0.03)
    assert fit.law.beta == pytest.approx(TRUE.beta, abs=0.03)
    laws = bootstrap_chinchilla(n, d, loss, fit, samples=40, seed=1)
    for key in ("alpha", "beta"):
        low, high = interval([getattr(b, key) for b in laws])
        assert low <= getattr(TRUE, key) <= high, (key, low, high)
        assert high - low < 0.2  # informative, not everything
    assert np.max(np.abs(fit.law.loss(n, d) / loss - 1)) < 0.03


def test_chinchilla_fit_without_noise_is_exact():
    n, d, loss = _synthetic(noise=0.0)
    law = fit_chinchilla(n, d, loss, starts=8).law
    for key in ("E", "alpha", "beta"):
        assert getattr(law, key) == pytest.approx(getattr(TRUE, key), rel=0.02), key


def test_power_law_is_exact_on_a_power_law():
    x = np.geomspace(1e4, 1e7, 6)
    law = fit_power_law(x, (8.8e13 / x) ** 0.076)  # Kaplan et al.'s L(N)
    assert law.alpha == pytest.approx(0.076, rel=1e-9) and law.x_c == pytest.approx(8.8e13, rel=1e-6)
    with pytest.raises(ValueError, match="two distinct"):
        fit_power_law([5, 5], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2], [0, 1])


def test_compute_optimal_minimises_the_law_on_the_isoflop_line():
    for flops in (1e18, 1e21):
        n_opt, d_opt = TRUE.compute_optimal(flops)
        assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-9)
        ns = np.geomspace(n_opt / 10, n_opt * 10, 2001)
        brute = ns[np.argmin(TRUE.loss(ns, flops / (6 * ns)))]
        assert math.log(brute / n_opt) == pytest.approx(0.0, abs=0.01)
    with pytest.raises(ValueError):
        ChinchillaLaw(E=1, A=1, alpha=0, B=1, beta=1).compute_optimal(1e20)


def test_too_few_points_refused():
    with pytest.raises(ValueError, match="5 parameters"):
        fit_chinchilla([1e5, 1e6], [1e6, 1e7], [3.0, 2.5])


def test_frontier_keeps_only_improvements():
    assert frontier([1, 2, 3, 4, 5], [5.0, 4.0, 4.5, 3.0, 3.5]) == [0, 1, 3]


def test_analysis_predicts_a_held_out_point_with_an_interval():
    n, d, loss = _synthetic(noise=0.003)
    points = [
        {"n_params": float(a), "tokens": float(b), "flops": 6 * a * b, "val_loss": float(c)}
        for a, b, c in zip(n, d, loss)
    ]
    result = analyse(points, delta=1e-3, starts=8, bootstrap=20, seed=0, level=0.95)
    assert {"kaplan_L_N", "kaplan_L_D", "chinchilla", "intervals", "compute_optimal"} <= set(result)
    assert result["kaplan_L_N"]["alpha"] > 0 and result["kaplan_L_D"]["alpha"] > 0
    held_n, held_d = 3e8, 1e10  # 3x the largest N
    predicted, low, high = predict(result, held_n, held_d)
    truth = float(TRUE.loss(held_n, held_d))
    assert abs(predicted - truth) / truth < 0.02 and low <= predicted <= high
    assert len(result["compute_optimal"]) == 3 and result["compute_optimal"][0]["n_opt"] > 0
