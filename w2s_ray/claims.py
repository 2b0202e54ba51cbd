"""The paper's claims, tested on a results table: seed-paired differences with named 95% intervals.

Each claim of Burns et al. (2023) that a sweep can test becomes a set of
comparisons. A comparison is a difference between two of the table's grid
points measured on the same seeds (same data splits), so seed-to-seed noise
cancels where it is shared; its interval is the Student-t interval over
seeds (:func:`w2s_ray.metrics.t_interval`). A comparison *supports* the
claim when its interval excludes 0 in the paper's direction, *contradicts*
it when it excludes 0 the other way, and is *unresolved* otherwise.

Claims (paper section):
  a. naive weak-to-strong training recovers part of the gap: PGR > 0 (§4.2);
  b. PGR grows with the strong model's size (§4.2, Fig. 3);
  c. the confidence loss helps at large gaps, not small ones (§4.3.2);
  d. the student agrees less with its supervisor as it grows (§5.1.3);
  e. early stopping (the oracle best point) beats the final PGR (§5.1.1);
  f. bootstrapping through a mid-size model beats the direct student (§4.3.1);
  g. generative finetuning raises PGR (§5.2.2);
  h. the gain grows with the student's misfit to its weak labels (Charikar et al. 2024).
The controls are a check of the engine, not of the paper: a supervisor that flips
GT at random must give a higher PGR than one whose flips the student's features
can learn, at the same flip rate. Controls never enter (a)-(h).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from w2s_ray import metrics
from w2s_ray.config import NOT_ADAPTED
from w2s_ray.models import is_control, parse_flips
from w2s_ray.presets import by_size

POINT = ["dataset", "weak", "strong", "finetune", "loss", "method", "alpha_max"]  # a grid point, over seeds
CLAIMS = {
    "a": "naive (xent) PGR > 0",
    "b": "PGR grows with the strong model",
    "c": "logconf beats xent where the gap is large",
    "d": "agreement with the supervisor falls as the student grows",
    "e": "early-stopped (oracle best) PGR above final PGR",
    "f": "bootstrapping beats the direct student",
    "g": "generative finetuning raises PGR",
    "h": "the gain grows with the student's misfit to its weak labels",
    "controls": "random flips give a higher PGR than learnable flips (an engine check)",
}


def _loss_label(point: dict[str, Any]) -> str:
    """xent, or the loss with its alpha: how a comparison names a grid point's loss."""
    return point["loss"] if point["loss"] == "xent" else f"{point['loss']}(a={point['alpha_max']:g})"


def _verdict(lo: float, hi: float, sign: int) -> str:
    if (lo > 0 and sign > 0) or (hi < 0 and sign < 0):
        return "supports"
    if (lo > 0 and sign < 0) or (hi < 0 and sign > 0):
        return "contradicts"
    return "unresolved"


def _comparison(claim: str, what: str, dataset: str, values: pd.Series, sign: int = 1,
                **extra: Any) -> dict[str, Any] | None:
    """One comparison from per-seed values (differences or PGRs); None with fewer than 2 seeds."""
    x = values.dropna().to_numpy(dtype=float)
    if len(x) < 2:
        return None
    mean, lo, hi = metrics.t_interval(x)
    return {"claim": claim, "dataset": dataset, "comparison": what, "n_seeds": len(x), "estimate": mean,
            "ci_low": lo, "ci_high": hi, "interval": metrics.T_INTERVAL, "verdict": _verdict(lo, hi, sign), **extra}


def _by_seed(g: pd.DataFrame, col: str) -> pd.Series:
    return g.set_index("seed")[col]


def _fixed(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["method"] == "fixed"]


def claim_a(cells: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for key, g in _fixed(cells)[lambda d: d["loss"] == "xent"].groupby(POINT, dropna=False, sort=False):
        d = dict(zip(POINT, key))
        out.append(_comparison("a", f"PGR {d['weak']} -> {d['strong']} ({d['finetune']})", d["dataset"],
                               _by_seed(g, "pgr"), gap=float((g["ceiling_acc"] - g["weak_acc"]).mean())))
    return out


def _largest_minus_smallest(cells: pd.DataFrame, col: str, claim: str, sign: int) -> list[dict[str, Any]]:
    """Per (dataset, weak, finetune, loss): ``col`` of the largest strong model minus the smallest's, by seed."""
    out = []
    for (dataset, weak, finetune, loss), g in _fixed(cells).groupby(["dataset", "weak", "finetune", "loss"],
                                                                      sort=False):
        strongs = by_size(list(g["strong"].unique()))
        if len(strongs) < 2:
            continue
        small, large = (_by_seed(g[g["strong"] == s], col) for s in (strongs[0], strongs[-1]))
        out.append(_comparison(claim, f"{col}: {weak} -> {strongs[-1]} minus -> {strongs[0]} ({finetune}, {loss})",
                               dataset, large - small, sign))
    return out


def claim_b(cells: pd.DataFrame) -> list[dict[str, Any]]:
    return _largest_minus_smallest(cells, "pgr", "b", +1)


def claim_d(cells: pd.DataFrame) -> list[dict[str, Any]]:
    return _largest_minus_smallest(cells, "agreement", "d", -1)


def claim_c(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """logconf minus xent PGR per pair; ``gap`` (ceiling - weak) says which side of the claim it tests."""
    out = []
    fixed = _fixed(cells)
    for (dataset, weak, strong, finetune), g in fixed.groupby(["dataset", "weak", "strong", "finetune"], sort=False):
        xent = g[g["loss"] == "xent"]
        for alpha, lc in g[g["loss"] == "logconf"].groupby("alpha_max"):
            gap = float((g["ceiling_acc"] - g["weak_acc"]).mean())
            out.append(_comparison("c", f"PGR logconf(a={alpha:g}) - xent, {weak} -> {strong} ({finetune})",
                                   dataset, _by_seed(lc, "pgr") - _by_seed(xent, "pgr"), gap=gap))
    return out


def claim_e(cells: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    if "pgr_best" not in cells:
        return out
    for key, g in _fixed(cells).groupby(POINT, dropna=False, sort=False):
        d = dict(zip(POINT, key))
        loss = _loss_label(d)
        out.append(_comparison("e", f"pgr_best - pgr, {d['weak']} -> {d['strong']} ({d['finetune']}, {loss})",
                               d["dataset"], _by_seed(g, "pgr_best") - _by_seed(g, "pgr")))
    return out


def claim_f(cells: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    if "chain" not in cells:
        return out
    for (dataset, weak, strong, loss, chain), g in cells[cells["method"] == "bootstrap"].groupby(
            ["dataset", "weak", "strong", "loss", "chain"], sort=False):
        direct = _fixed(cells)
        direct = direct[(direct["dataset"] == dataset) & (direct["weak"] == weak) & (direct["strong"] == strong)
                        & (direct["loss"] == loss) & (direct["finetune"] == "full")]
        out.append(_comparison("f", f"PGR {chain} minus direct ({loss})", dataset,
                               _by_seed(g, "pgr") - _by_seed(direct, "pgr")))
    return out


def claim_g(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """PGR with generative finetuning minus without, per grid point, paired by seed (paper §5.2.2)."""
    out = []
    fixed = _fixed(cells)
    same = ["dataset", "weak", "strong", "base_finetune", "loss", "alpha_max"]
    plain = fixed[fixed["generative_finetune"] == NOT_ADAPTED]
    adapted = fixed[fixed["generative_finetune"] != NOT_ADAPTED]
    for key, g in adapted.groupby([*same, "generative_finetune"], sort=False, dropna=False):  # xent: alpha NaN
        d = dict(zip([*same, "generative_finetune"], key))
        base = plain[np.logical_and.reduce([(plain[c] == d[c]) | (plain[c].isna() & pd.isna(d[c])) for c in same])]
        if base.empty:
            continue
        loss = _loss_label(d)
        out.append(_comparison("g", f"PGR adapted ({d['generative_finetune']}) - not, {d['weak']} -> {d['strong']} "
                                    f"({loss})", d["dataset"], _by_seed(g, "pgr") - _by_seed(base, "pgr")))
    return out


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of y on x (NaN when x does not vary)."""
    dx = x - x.mean()
    denom = float(dx @ dx)
    return float(dx @ (y - y.mean()) / denom) if denom > 0 else float("nan")


def claim_h(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (dataset, finetune) and seed: the slope of the gain (student - weak accuracy) on the misfit (1 -
    agreement with the supervisor on test) across the grid points; its interval is over seeds.

    Charikar et al. (2024) bound the gain below by the misfit for a convex strong class: a student that
    disagrees more with its weak labels should gain more. With accuracies, gain <= misfit always holds
    (the two predictors differ on at least |acc_s - acc_w| of the rows), so the claim tested is the
    direction: a positive slope across the grid points, seed by seed.
    """
    out = []
    fixed = _fixed(cells)
    for (dataset, finetune), g in fixed.groupby(["dataset", "finetune"], sort=False):
        slopes = {}
        for seed, s in g.groupby("seed"):
            if len(s) >= 3:
                slopes[seed] = _slope((1 - s["agreement"]).to_numpy(float),
                                      (s["student_acc"] - s["weak_acc"]).to_numpy(float))
        points = int(g.groupby("seed").size().median())
        out.append(_comparison("h", f"slope of gain on misfit across {points} grid points ({finetune})", dataset,
                               pd.Series(slopes, dtype=float), points=points))
    return out


def claim_controls(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """PGR under random flips minus PGR under learnable flips at the same rate, per student, by seed."""
    out = []
    fixed = _fixed(cells)
    flips = fixed.loc[fixed["weak"].map(is_control).astype(bool)]
    kind = flips["weak"].map(lambda w: parse_flips(w)[0])
    rate = flips["weak"].map(lambda w: parse_flips(w)[1])
    for (dataset, strong, finetune, loss, r), g in flips.assign(rate=rate).groupby(
            ["dataset", "strong", "finetune", "loss", "rate"], sort=False):
        by_kind = {k: _by_seed(g[kind[g.index] == k], "pgr") for k in ("random", "learnable")}
        out.append(_comparison("controls", f"PGR random-flips@{r:g} - learnable-flips@{r:g} -> {strong} "
                                           f"({finetune}, {loss})", dataset,
                               by_kind["random"] - by_kind["learnable"],
                               random_pgr=float(by_kind["random"].mean()),
                               learnable_pgr=float(by_kind["learnable"].mean())))
    return out


PAPER: dict[str, Callable[[pd.DataFrame], list[dict[str, Any]]]] = {
    "a": claim_a, "b": claim_b, "c": claim_c, "d": claim_d, "e": claim_e, "f": claim_f, "g": claim_g,
    "h": claim_h}


def comparisons(cells: pd.DataFrame) -> pd.DataFrame:
    """Every comparison the table allows, one row each (cells: the results rows with status ok)."""
    cells = cells.copy()
    cells["finetune"] = cells.get("finetune", "full")
    cells["generative_finetune"] = cells.get("generative_finetune", NOT_ADAPTED)
    cells["base_finetune"] = cells["finetune"]  # claims (a)-(f) never pair an adapted cell with a plain one:
    adapted = cells["generative_finetune"] != NOT_ADAPTED
    cells.loc[adapted, "finetune"] = cells.loc[adapted, "finetune"] + "+adapted"
    if "status" in cells:
        cells = cells[cells["status"] == "ok"]
    control = cells["weak"].map(is_control).astype(bool)  # an empty object mask would select columns
    rows = [r for test in PAPER.values() for r in test(cells[~control]) if r is not None]
    rows += [r for r in claim_controls(cells[control]) if r is not None]
    return pd.DataFrame(rows)


def dataset_verdict(supports: int, contradicts: int, comparisons: int) -> str:
    """A dataset's verdict on a claim: that of more than half its comparisons, else unresolved."""
    if 2 * supports > comparisons:
        return "supports"
    if 2 * contradicts > comparisons:
        return "contradicts"
    return "unresolved"


def summary(comps: pd.DataFrame) -> pd.DataFrame:
    """Per claim and dataset: how many comparisons support, contradict or leave it unresolved, and the
    dataset's verdict (:func:`dataset_verdict`)."""
    out = []
    order = {c: i for i, c in enumerate(CLAIMS)}
    for (_, claim, dataset), g in comps.assign(order=comps["claim"].map(order)).groupby(
            ["order", "claim", "dataset"], sort=True):
        counts = g["verdict"].value_counts()
        n = {v: int(counts.get(v, 0)) for v in ("supports", "contradicts", "unresolved")}
        out.append({"claim": f"({claim}) {CLAIMS[claim]}", "dataset": dataset, "comparisons": len(g), **n,
                    "verdict": dataset_verdict(n["supports"], n["contradicts"], len(g)),
                    "mean estimate": float(g["estimate"].mean()),
                    "median estimate": float(np.median(g["estimate"]))})
    return pd.DataFrame(out)


def sign_counts(by_dataset: pd.DataFrame) -> pd.DataFrame:
    """Per claim, across datasets: how many datasets support, contradict or leave it unresolved (from
    :func:`summary`), as EleutherAI's write-up counted its 21 datasets."""
    out = []
    for claim, g in by_dataset.groupby("claim", sort=False):
        counts = g["verdict"].value_counts()
        out.append({"claim": claim, "datasets": len(g),
                    **{v: int(counts.get(v, 0)) for v in ("supports", "contradicts", "unresolved")}})
    return pd.DataFrame(out)
