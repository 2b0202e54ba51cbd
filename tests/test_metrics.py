import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from w2s_ray import metrics


def test_accuracy_and_stderr():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.4, 0.1])
    assert metrics.accuracy(y, p) == 0.75
    assert metrics.accuracy_stderr(0.75, 4) == pytest.approx(np.sqrt(0.75 * 0.25 / 4))


def test_auroc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert metrics.auroc(y, s) == pytest.approx(expected)


def test_auroc_undefined_with_one_class():
    assert np.isnan(metrics.auroc(np.ones(5), np.arange(5.0)))


def test_pgr_value_and_degenerate_gap():
    assert metrics.pgr(0.8, 0.85, 0.9).value == pytest.approx(0.5)
    bad = metrics.pgr(0.9, 0.85, 0.9)
    assert bad.value is None and "degenerate" in bad.reason
    assert "n/a" in str(bad)


@given(st.floats(0.0, 0.9), st.floats(0.01, 0.1), st.floats(0, 1))
def test_pgr_is_zero_at_weak_and_one_at_ceiling(weak, gap, frac):
    ceiling = weak + gap
    assert metrics.pgr(weak, weak, ceiling).value == pytest.approx(0.0)
    assert metrics.pgr(weak, ceiling, ceiling).value == pytest.approx(1.0)
    assert metrics.pgr(weak, weak + frac * gap, ceiling).value == pytest.approx(frac, abs=1e-6)


def test_bootstrap_pgr_brackets_the_point_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    def noisy(acc):
        flip = rng.random(2000) > acc
        return np.where(flip, 1 - y, y).astype(float)
    pw, ps, pc = noisy(0.8), noisy(0.85), noisy(0.9)
    point = metrics.pgr(metrics.accuracy(y, pw), metrics.accuracy(y, ps), metrics.accuracy(y, pc)).value
    se, lo, hi = metrics.bootstrap_pgr(y, pw, ps, pc, n_boot=500)
    assert lo < point < hi and 0 < se < 0.5
