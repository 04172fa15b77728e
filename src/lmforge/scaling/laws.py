"""Scaling-law fits: Kaplan power laws, the Chinchilla parametric law, bootstrap intervals, optimal N and D.

- Kaplan et al. 2020 (eqs. 1.1–1.2): ``L(N) = (N_c / N)^α_N`` and ``L(D) = (D_c / D)^α_D``, each a
  straight line in log–log space, fitted by least squares. L(N) uses, for every model size, its point
  with the largest token budget; L(D) uses, for every budget, its point with the largest model. (Kaplan
  fits models trained to convergence or early-stopped; at sweep scale the largest budget stands in.)
- Hoffmann et al. 2022 (Chinchilla, §3.3 and appendix D.2): ``L(N, D) = E + A / N^α + B / D^β``,
  fitted as ``a = log A, b = log B, e = log E`` by minimising the Huber loss (δ = 1e-3) between
  ``LSE(a − α log N, b − β log D, e)`` and ``log L`` with L-BFGS, from initialisations on the grid
  α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}, keeping the best.
  Departure: Hoffmann et al. run L-BFGS from all 4,500 grid points; here the objective is evaluated
  at every grid point at once (vectorised) and L-BFGS runs from the ``starts`` best of them (default
  16). L-BFGS from every point took 650 s on a loaded 2-core CPU; the screened fit takes seconds.
  The bootstrap refits start from the best few end points of the full-data fit.
- Compute-optimal allocation for ``C = 6 N D`` (Hoffmann et al. eq. 4):
  ``N_opt = G (C/6)^(β/(α+β))``, ``D_opt = G^-1 (C/6)^(α/(α+β))``, ``G = (αA / (βB))^(1/(α+β))``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3
# Hoffmann et al. 2022, appendix D.2: the grid of initialisations (a, b, e, alpha, beta)
INIT_GRID = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}


@dataclass(frozen=True)
class PowerLaw:
    """``L(x) = (x_c / x)^alpha`` (Kaplan et al. 2020)."""

    alpha: float
    x_c: float

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return (self.x_c / np.asarray(x, dtype=float)) ** self.alpha


@dataclass(frozen=True)
class ChinchillaLaw:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Predicted loss at ``n`` non-embedding parameters trained on ``d`` tokens."""
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def compute_optimal(self, flops: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """``(N_opt, D_opt)`` minimising the loss at compute ``flops = 6 N D`` (Hoffmann et al. eq. 4).

        Raises:
            ValueError: alpha or beta not positive (no finite optimum).
        """
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError(f"no compute-optimal allocation for alpha={self.alpha}, beta={self.beta}")
        c = np.asarray(flops, dtype=float) / 6.0
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        return g * c ** (self.beta / s), c ** (self.alpha / s) / g

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_power_law(x: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """Least-squares fit of ``log L = alpha (log x_c − log x)``.

    Raises:
        ValueError: fewer than two distinct ``x`` or non-positive values.
    """
    lx, ll = _logs(x, "x"), _logs(loss, "loss")
    if len(set(lx.tolist())) < 2:
        raise ValueError(f"a power law needs at least two distinct x values, got {list(x)}")
    slope, intercept = np.polyfit(lx, ll, 1)
    alpha = -float(slope)
    x_c = math.exp(float(intercept) / alpha) if alpha != 0 else math.inf
    return PowerLaw(alpha=alpha, x_c=x_c)


def _logs(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a non-empty list of finite positive numbers, got {list(values)}")
    return np.log(arr)


def _huber_objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the log-space residuals, divided by ``delta`` (same minimiser, a scale on
    which L-BFGS's stopping tolerances are meaningful), and its gradient in ``theta = (a, b, e, α, β)``."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # [3, P]
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    pred = top + np.log(total)  # log(A/N^α + B/D^β + E), [P]
    weights /= total  # softmax: d pred / d term
    r = pred - log_l
    small = np.abs(r) <= delta
    value = float(np.where(small, 0.5 * r**2 / delta, np.abs(r) - 0.5 * delta).sum())
    g = np.where(small, r / delta, np.sign(r))  # d (huber / delta) / d r, [P]
    grad = np.array(
        [
            (g * weights[0]).sum(),
            (g * weights[1]).sum(),
            (g * weights[2]).sum(),
            -(g * weights[0] * log_n).sum(),
            -(g * weights[1] * log_d).sum(),
        ]
    )
    return value, grad


def _grid_objective(
    grid: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> np.ndarray:
    """The Huber objective at every row ``(a, b, e, α, β)`` of ``grid`` [G, 5] at once; returns [G]."""
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))  # each [G, 1]
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
    top = terms.max(axis=0)
    r = top + np.log(np.exp(terms - top).sum(axis=0)) - log_l  # [G, P]
    return np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)


def _minimise(
    inits: Sequence[np.ndarray], log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> list[tuple[float, np.ndarray]]:
    """L-BFGS from each initialisation; ``(objective, theta)`` of each, best first."""
    from scipy.optimize import minimize

    found = []
    for x0 in inits:
        res = minimize(
            _huber_objective,
            np.asarray(x0, dtype=float),
            args=(log_n, log_d, log_l, delta),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 500},
        )
        if np.all(np.isfinite(res.x)) and math.isfinite(res.fun):
            found.append((float(res.fun), res.x))
    found.sort(key=lambda item: item[0])
    return found


def _law(theta: np.ndarray) -> ChinchillaLaw:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return ChinchillaLaw(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


def init_grid() -> list[np.ndarray]:
    """Every initialisation of Hoffmann et al.'s grid, as ``(a, b, e, alpha, beta)`` (4,500 of them)."""
    keys = ("a", "b", "e", "alpha", "beta")
    return [np.array(v) for v in itertools.product(*(INIT_GRID[k] for k in keys))]


@dataclass
class ChinchillaFit:
    """The best law, its objective, and the best initialisations' end points (bootstrap starts)."""

    law: ChinchillaLaw
    objective: float
    starts: list[np.ndarray]


def fit_chinchilla(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    delta: float = HUBER_DELTA,
    inits: Sequence[np.ndarray] | None = None,
    starts: int = 16,
    keep_starts: int = 4,
) -> ChinchillaFit:
    """Fit ``L(N, D) = E + A/N^α + B/D^β`` (method in the module docstring).

    Args:
        n, d, loss: one entry per trained point (non-embedding parameters, tokens, final val loss).
        delta: Huber threshold on log-loss residuals.
        inits: initialisations ``(a, b, e, alpha, beta)``; default the whole grid (``init_grid``).
        starts: L-BFGS runs from this many of the ``inits`` with the lowest objective (0 = from all).
        keep_starts: how many of the best distinct solutions to keep as bootstrap starting points.

    Raises:
        ValueError: fewer than 5 points (5 parameters), non-positive values, or no converged start.
    """
    log_n, log_d, log_l = _logs(n, "n"), _logs(d, "d"), _logs(loss, "loss")
    if not len(log_n) == len(log_d) == len(log_l):
        raise ValueError(f"n, d and loss differ in length: {len(log_n)}, {len(log_d)}, {len(log_l)}")
    if len(log_n) < 5:
        raise ValueError(f"the Chinchilla law has 5 parameters; got only {len(log_n)} points")
    grid = np.asarray(init_grid() if inits is None else inits, dtype=float).reshape(-1, 5)
    if 0 < starts < len(grid):
        values = _grid_objective(grid, log_n, log_d, log_l, delta)
        grid = grid[np.argsort(values, kind="stable")[:starts]]
    found = _minimise(list(grid), log_n, log_d, log_l, delta)
    if not found:
        raise ValueError("no initialisation converged to a finite fit")
    starts: list[np.ndarray] = []
    for _, theta in found:
        if all(np.max(np.abs(theta - s)) > 1e-3 for s in starts):
            starts.append(theta)
        if len(starts) >= keep_starts:
            break
    return ChinchillaFit(law=_law(found[0][1]), objective=found[0][0], starts=starts)


def bootstrap_chinchilla(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    fit: ChinchillaFit,
    *,
    samples: int = 200,
    seed: int = 0,
    delta: float = HUBER_DELTA,
) -> list[ChinchillaLaw]:
    """Refit on ``samples`` resamples of the points (drawn with replacement); one law per resample.

    Resamples with fewer than 5 distinct points are redrawn. Each refit starts from ``fit.starts``.
    """
    n_arr, d_arr, l_arr = (np.asarray(v, dtype=float) for v in (n, d, loss))
    rng = np.random.default_rng(seed)
    laws = []
    while len(laws) < samples:
        idx = rng.integers(0, len(n_arr), size=len(n_arr))
        if len(set(idx.tolist())) < 5:
            continue
        found = _minimise(fit.starts, np.log(n_arr[idx]), np.log(d_arr[idx]), np.log(l_arr[idx]), delta)
        if found:
            laws.append(_law(found[0][1]))
    return laws


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Central percentile interval of ``values`` (e.g. the 2.5th and 97.5th percentiles for 0.95)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(arr, [tail, 100 - tail])
    return float(low), float(high)


def frontier(flops: Sequence[float], loss: Sequence[float]) -> list[int]:
    """Indices of the compute frontier: points no cheaper point beats, sorted by compute."""
    order = np.argsort(np.asarray(flops, dtype=float), kind="stable")
    best, keep = math.inf, []
    for i in order:
        if loss[i] < best:
            best = float(loss[i])
            keep.append(int(i))
    return keep
