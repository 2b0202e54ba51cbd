"""Evaluation metrics: accuracy, AUROC, agreement, PGR and their uncertainty.

NumPy only. PGR is undefined when the ceiling does not beat the weak model;
:func:`pgr` says so instead of returning a meaningless ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def accuracy(labels: np.ndarray, p1: np.ndarray) -> float:
    return float(np.mean((np.asarray(p1) > 0.5) == (np.asarray(labels) > 0.5)))


def accuracy_stderr(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n rows."""
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / n) if n > 0 else float("nan")


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=float)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=float)
    # average ranks over tied runs
    start = 0
    for end in range(1, scores.size + 1):
        if end == scores.size or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def agreement(p1_a: np.ndarray, p1_b: np.ndarray) -> float:
    """Fraction of rows where two models predict the same class."""
    return float(np.mean((np.asarray(p1_a) > 0.5) == (np.asarray(p1_b) > 0.5)))


@dataclass(frozen=True)
class PGR:
    """Performance gap recovered; ``value`` is None when the gap is degenerate."""

    value: float | None
    gap: float
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.value:.3f}" if self.value is not None else f"n/a ({self.reason})"


def pgr(weak: float, student: float, ceiling: float) -> PGR:
    """(student - weak) / (ceiling - weak), or n/a when ceiling <= weak."""
    gap = ceiling - weak
    if gap <= 0:
        return PGR(None, gap, f"degenerate gap: ceiling {ceiling:.4f} <= weak {weak:.4f}")
    return PGR((student - weak) / gap, gap)


def bootstrap_pgr(
    labels: np.ndarray,
    p_weak: np.ndarray,
    p_student: np.ndarray,
    p_ceiling: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired test-set bootstrap of PGR: (stderr, 2.5%, 97.5%) over defined draws."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels) > 0.5
    correct = np.stack([(np.asarray(p) > 0.5) == y for p in (p_weak, p_student, p_ceiling)])
    n = y.size
    idx = rng.integers(0, n, size=(n_boot, n))
    accs = correct[:, idx].mean(axis=2)  # (3, n_boot)
    gap = accs[2] - accs[0]
    ok = gap > 0
    if ok.sum() < 2:
        return float("nan"), float("nan"), float("nan")
    values = (accs[1][ok] - accs[0][ok]) / gap[ok]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(values.std(ddof=1)), float(lo), float(hi)


# Two-sided 95% Student t quantiles t(0.975, df); beyond the table the next lower tabled df is used (wider).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
T_INTERVAL = "95% t-interval over seeds"


def t_quantile_975(df: int) -> float:
    return T_975[max(d for d in T_975 if d <= df)]


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean of ``values`` (>= 2 of them).

    With 3 seeds it is mean ± 4.30·sd/√3: wide, as 3 draws warrant. A
    bootstrap over 3 values would give, in effect, their min and max.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {x.size}")
    half = t_quantile_975(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)
