"""Results from committed histories and rows: test curves, the oracle pgr_best, the aggregate's intervals."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2s_ray import metrics
from w2s_ray.results import aggregate, curve_fields, gt_test_curve
from w2s_ray.train import curve_batches


def _history(points_per_epoch: int, accs: list[list[float]], steps: int = 8) -> list[dict]:
    """A fine-tuned student's history: ``accs[e]`` are epoch e's test points, its last at the epoch's end."""
    out = []
    for e, epoch_accs in enumerate(accs):
        curve = [{"step": e * steps + round((k + 1) * steps / points_per_epoch), "gt_test_acc": a}
                 for k, a in enumerate(epoch_accs)]
        out.append({"epoch": e + 1, "step": (e + 1) * steps, "gt_test_acc": epoch_accs[-1], "gt_test_curve": curve})
    return out


def test_curve_batches_are_evenly_spaced_and_never_the_epochs_end():
    assert curve_batches(8, 0) == set() and curve_batches(8, 1) == set()
    assert curve_batches(8, 2) == {4}
    assert curve_batches(8, 4) == {2, 4, 6}
    assert curve_batches(3, 8) == {1, 2}  # more points than batches: one per batch


def test_pgr_best_is_the_curves_best_point_and_final_is_its_last():
    history = _history(2, [[0.70, 0.80], [0.90, 0.75]])
    assert gt_test_curve(history) == [(0.5, 0.70), (1.0, 0.80), (1.5, 0.90), (2.0, 0.75)]
    f = curve_fields(history, {"weak_acc": 0.7, "ceiling_acc": 0.9})
    assert f["best_epoch"] == 1.5 and f["student_best_acc"] == 0.90
    assert f["pgr_best"] == pytest.approx(1.0) and f["student_gt_test_acc_by_epoch"] == [0.80, 0.75]


def test_a_probe_history_is_one_point_per_epoch_and_no_curve_is_none():
    probe = [{"epoch": e, "step": 4 * e, "gt_test_acc": a} for e, a in ((1, 0.6), (2, 0.7))]
    assert gt_test_curve(probe) == [(1.0, 0.6), (2.0, 0.7)]
    none = curve_fields([{"epoch": 1, "step": 4}], {"weak_acc": 0.6, "ceiling_acc": 0.8})
    assert none["pgr_best"] is None and none["curve_acc"] is None


def _row(seed: int, weak: float, student: float, ceiling: float, **kw) -> dict:
    pgr = metrics.pgr(weak, student, ceiling).value
    return {"dataset": "d", "weak": "w", "strong": "s", "finetune": "full", "loss": "xent", "method": "fixed",
            "alpha_max": None, "warmup_frac": None, "seed": seed, "weak_acc": weak, "student_acc": student,
            "ceiling_acc": ceiling, "agreement": 0.9, "pgr": pgr, "pgr_ci_low": -1.0, "pgr_ci_high": 1.0,
            "pgr_best": kw.get("pgr_best", pgr)}


def test_aggregate_gives_a_t_interval_over_seeds_and_names_it():
    rows = [_row(0, 0.70, 0.75, 0.80), _row(1, 0.70, 0.72, 0.80), _row(2, 0.70, 0.79, 0.80)]
    agg = aggregate(rows).iloc[0]
    pgrs = np.array([0.5, 0.2, 0.9])
    half = 4.303 * pgrs.std(ddof=1) / math.sqrt(3)
    assert agg["pgr_mean"] == pytest.approx(pgrs.mean())
    assert (agg["pgr_ci_low"], agg["pgr_ci_high"]) == pytest.approx((pgrs.mean() - half, pgrs.mean() + half))
    assert agg["pgr_ci_method"] == metrics.T_INTERVAL and agg["pgr_best_ci_method"] == metrics.T_INTERVAL
    assert agg["weak_acc_std"] == pytest.approx(0.0) and agg["student_acc_std"] > 0  # the noise floor


def test_aggregate_of_one_seed_keeps_its_test_row_bootstrap_and_splits_finetune_modes():
    rows = [_row(0, 0.7, 0.75, 0.8), {**_row(0, 0.7, 0.71, 0.8), "finetune": "weak=full/strong=probe"}]
    agg = aggregate(rows)
    assert len(agg) == 2  # a probe student is never averaged with a fine-tuned one
    assert set(agg["pgr_ci_method"]) == {"95% bootstrap over test rows (one seed)"}
    assert (agg["pgr_ci_low"] == -1.0).all()


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 30):
        assert metrics.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert metrics.t_quantile_975(45) >= stats.t.ppf(0.975, 45)  # off the table: the wider neighbour


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-2, 2, allow_nan=False), min_size=2, max_size=12))
def test_t_interval_is_centred_on_the_mean_and_contains_it(values):
    mean, lo, hi = metrics.t_interval(np.array(values))
    assert lo <= mean <= hi
    assert mean - lo == pytest.approx(hi - mean, abs=1e-9)
