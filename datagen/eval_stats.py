"""The numbers of a pairwise evaluation: win-rate with a bootstrap interval, and a
length-controlled win-rate (judges favour longer answers; AlpacaEval 2 corrects for it by
regressing the preference on the length difference, and so do we, simplified).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def pair_summary(
    first: str,
    second: str,
    preferences: list[float | None],
    words_first: list[int],
    words_second: list[int],
    inconsistent: int = 0,
    errors: int = 0,
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Win-rate of `first` over `second` with its interval, lengths and the length-controlled rate."""
    judged = [(p, a, b) for p, a, b in zip(preferences, words_first, words_second, strict=True) if p is not None]
    prefs = np.array([p for p, _, _ in judged], dtype=float)
    diff = np.array([a - b for _, a, b in judged], dtype=float)
    low, high = bootstrap_interval(prefs, samples=samples, seed=seed) if len(prefs) else (None, None)
    return {
        "first": first,
        "second": second,
        "n": len(preferences),
        "judged": len(prefs),
        "wins": int((prefs == 1).sum()),
        "ties": int((prefs == 0.5).sum()),
        "losses": int((prefs == 0).sum()),
        "order_inconsistent": inconsistent,
        "unjudged": len(preferences) - len(prefs),
        "judge_errors": errors,
        "win_rate": round4(prefs.mean()) if len(prefs) else None,
        "ci95": [round4(low), round4(high)],
        "lc_win_rate": round4(length_controlled_win_rate(prefs, diff)),
        "words_first": mean2(words_first),
        "words_second": mean2(words_second),
    }


def bootstrap_interval(
    values: np.ndarray, samples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample prompts with replacement."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def length_controlled_win_rate(
    preferences: np.ndarray, length_diff: np.ndarray, penalty: float = 0.1
) -> float | None:
    """P(first wins) at zero length difference, from a logistic fit of preference on length difference.

    The fit uses the ties as half wins (soft labels in the cross-entropy). The difference is
    divided by its standard deviation so `penalty` (a small L2 on the slope only, which keeps
    the fit finite when the longer answer always wins) means the same at any scale. With no
    length variation the rate equals the plain win-rate."""
    from scipy.optimize import minimize

    y = np.asarray(preferences, dtype=float)
    if len(y) < 2:
        return float(y.mean()) if len(y) else None
    x = np.asarray(length_diff, dtype=float)
    scale = x.std()
    if scale == 0:
        return float(y.mean())
    x = x / scale

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        bias, slope = theta
        z = bias + slope * x
        p = 1 / (1 + np.exp(-z))
        loss = np.mean(np.logaddexp(0, z) - y * z) + penalty * slope**2
        residual = p - y
        return loss, np.array([residual.mean(), (residual * x).mean() + 2 * penalty * slope])

    fit = minimize(objective, np.zeros(2), jac=True, method="L-BFGS-B")
    return float(1 / (1 + math.exp(-fit.x[0])))


def round4(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def mean2(values: list[int] | list[float]) -> float:
    return round(float(np.mean(values)), 2) if len(values) else 0.0
