"""Results rows from committed artifacts: every number is read from a prediction file.

One row per cell: accuracies (with binomial standard errors) and AUROC of the
weak model, the student and the ceiling on the GT test set, student-weak
agreement, PGR with a paired bootstrap, the stage keys and their timings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from w2s_ray import metrics
from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import NOT_ADAPTED
from w2s_ray.label import read_predictions
from w2s_ray.plan import Cell

ROLES = ("weak", "student", "ceiling")


def _test_frame(store: ArtifactStore, cell: Cell) -> pd.DataFrame:
    import pyarrow.parquet as pq

    test = pq.read_table(store.path(cell.data, "test.parquet"), filesystem=store.fs, columns=["id", "label"])
    frame = test.to_pandas()
    for role, key in (("weak", cell.weak_test), ("student", student_test_key(store, cell)),
                      ("ceiling", cell.ceiling_test)):
        preds = read_predictions(store, key)[["id", "p1"]].rename(columns={"p1": f"p_{role}"})
        frame = frame.merge(preds, on="id", how="left", validate="one_to_one")
    if frame.isna().any().any():
        raise ValueError(f"predictions do not cover the test set of {cell.data}")
    return frame


def student_test_key(store: ArtifactStore, cell: Cell) -> str:
    """The student's test predictions; for a search, those of the trial it selected."""
    if cell.config.search is None:
        return cell.student_test
    return store.manifest(cell.student, verify=False).meta["best"]["test_key"]


def _planned_method(cell: Cell) -> dict[str, Any]:
    """How the student's loss knobs are chosen, as the spec says: fixed, or searched (and on what)."""
    cfg = cell.config
    if cfg.search is None:
        return {"method": cfg.method, "selection": None,
                "chain": " -> ".join((cfg.weak, *cfg.chain, cfg.strong)) if cfg.chain else None,
                "alpha_max": cfg.loss.alpha_max if cfg.loss.uses_alpha else None,
                "warmup_frac": cfg.loss.warmup_frac if cfg.loss.uses_alpha else None}
    return {"method": f"search:{cfg.search.objective}",
            "selection": "ORACLE (GT validation labels)" if cfg.search.objective == "oracle" else "weak labels only",
            "alpha_max": None, "warmup_frac": None}


def _method_fields(store: ArtifactStore, cell: Cell) -> dict[str, Any]:
    """The planned method and, for a search, what it selected."""
    if cell.config.search is None:
        return _planned_method(cell)
    best = store.manifest(cell.student, verify=False).meta["best"]
    return {**_planned_method(cell), "best_alpha_max": best["alpha_max"], "best_warmup_frac": best["warmup_frac"],
            "best_lr": best["lr"], "best_val_objective": best["objective"]}


def agreement_by_weak_correctness(y: np.ndarray, p_weak: np.ndarray, p_student: np.ndarray) -> dict[str, Any]:
    """Student-weak agreement where the weak label is right and where it is wrong (paper §5).

    A student that imitates its supervisor agrees on both; one that
    generalises beyond it agrees where the weak model is right and disagrees
    (i.e. is right) where it is wrong. NaN where a group is empty.
    """
    right = (p_weak > 0.5) == (y > 0.5)
    out: dict[str, Any] = {}
    for name, mask in (("weak_right", right), ("weak_wrong", ~right)):
        out[f"agreement_{name}"] = metrics.agreement(p_student[mask], p_weak[mask]) if mask.any() else math.nan
        out[f"n_{name}"] = int(mask.sum())
    return out


def _cell_fields(cell: Cell) -> dict[str, Any]:
    cfg = cell.config
    return {"dataset": cfg.dataset, "weak": cfg.weak, "strong": cfg.strong,
            "loss": "logconf" if cfg.search is not None else cfg.loss.name, "seed": cfg.split.seed,
            "finetune": cfg.finetune.label,
            "generative_finetune": cfg.generative_finetune.label if cfg.generative_finetune else NOT_ADAPTED}


def incomplete_row(cell: Cell, status: str, reason: str | None) -> dict[str, Any]:
    """The row of a cell that could not be measured: what it is, ``status`` (failed / blocked) and why."""
    return {**_cell_fields(cell), "status": status, "reason": reason, **_planned_method(cell)}


def cell_row(store: ArtifactStore, cell: Cell, n_boot: int = 1000) -> dict[str, Any]:
    """The results row of one cell, measured from its committed artifacts."""
    frame = _test_frame(store, cell)
    y = frame["label"].to_numpy()
    cfg = cell.config
    row: dict[str, Any] = {**_cell_fields(cell), "status": "ok", "reason": None,
                           **_method_fields(store, cell), "n_test": len(y)}
    for role in ROLES:
        p = frame[f"p_{role}"].to_numpy()
        acc = metrics.accuracy(y, p)
        row[f"{role}_acc"] = acc
        row[f"{role}_acc_se"] = metrics.accuracy_stderr(acc, len(y))
        row[f"{role}_auroc"] = metrics.auroc(y, p)
    row["agreement"] = metrics.agreement(frame["p_student"], frame["p_weak"])
    row.update(agreement_by_weak_correctness(y, frame["p_weak"].to_numpy(), frame["p_student"].to_numpy()))
    result = metrics.pgr(row["weak_acc"], row["student_acc"], row["ceiling_acc"])
    row["pgr"] = result.value
    row["pgr_note"] = result.reason
    se, lo, hi = metrics.bootstrap_pgr(y, frame["p_weak"], frame["p_student"], frame["p_ceiling"],
                                       n_boot=n_boot, seed=cfg.split.seed)
    row.update({"pgr_se": se, "pgr_ci_low": lo, "pgr_ci_high": hi})
    for role, key in (("weak", cell.weak), ("labels", cell.weak_labels), ("ceiling", cell.ceiling),
                      ("student", cell.student)):
        row[f"{role}_key"] = key
        m = store.manifest(key, verify=False)
        row[f"{role}_seconds"] = m.meta.get("seconds") if m else None
        if role != "labels":  # early stopping: the epoch kept (None: the last, or no epochs at all)
            row[f"{role}_stop_epoch"] = m.meta.get("selected_epoch") if m else None
    row["data_key"] = cell.data
    row.update(curve_fields(store.manifest(cell.student, verify=False).meta.get("history") or [], row))
    return row


def gt_test_curve(history: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(epoch, GT test accuracy) points a student logged while it trained, in order; epochs may be fractional.

    A probe logs one point per epoch, a fine-tuned student with
    ``test_curves: N`` N per epoch (``gt_test_curve``); both are analysis only.
    """
    if not history or "gt_test_acc" not in history[0]:
        return []
    per_epoch = history[0]["step"] or 1  # optimizer steps in one epoch
    points: list[tuple[float, float]] = []
    for h in history:
        for p in h.get("gt_test_curve") or [{"step": h["step"], "gt_test_acc": h["gt_test_acc"]}]:
            points.append((p["step"] / per_epoch, p["gt_test_acc"]))
    return points


def curve_fields(history: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    """The student's test curve and the PGR at its best point (``pgr_best``).

    ``pgr_best`` is an ORACLE: the best point is picked with GT test labels,
    so it bounds what early stopping could reach and is never a result to
    select on (paper §5.1.1). Nothing in training or selection reads it.
    """
    points = gt_test_curve(history)
    if not points:
        return {"student_gt_test_acc_by_epoch": None, "curve_epochs": None, "curve_acc": None,
                "student_best_acc": None, "best_epoch": None, "pgr_best": None}
    epochs, accs = [e for e, _ in points], [a for _, a in points]
    best = int(np.argmax(accs))  # the first of equal maxima
    return {"student_gt_test_acc_by_epoch": [h["gt_test_acc"] for h in history if "gt_test_acc" in h],
            "curve_epochs": epochs, "curve_acc": accs, "student_best_acc": accs[best], "best_epoch": epochs[best],
            "pgr_best": metrics.pgr(row["weak_acc"], accs[best], row["ceiling_acc"]).value}


GROUP = ["dataset", "weak", "strong", "finetune", "generative_finetune", "loss", "method", "alpha_max",
         "warmup_frac"]  # + chain


def aggregate(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per grid point over seeds: means, spreads and 95% intervals, each interval's method named.

    PGR (final, and the oracle ``pgr_best``) gets a Student-t interval over
    seeds (``pgr_ci_method``); with one seed, the cell's paired bootstrap over
    test rows. ``*_acc_std`` over seeds is the noise floor a PGR difference
    must clear.
    """
    frame = pd.DataFrame(rows)
    frame["finetune"] = frame.get("finetune", "full")  # older tables lack the columns
    frame["generative_finetune"] = frame.get("generative_finetune", NOT_ADAPTED)
    out = []
    group = GROUP + (["chain"] if "chain" in frame else [])  # two chains between one pair stay apart
    for key, g in frame.groupby(group, dropna=False, sort=False):
        row = dict(zip(group, key))
        row["n_seeds"] = len(g)
        for col in ("weak_acc", "student_acc", "ceiling_acc", "agreement", "agreement_weak_right",
                    "agreement_weak_wrong"):
            row[f"{col}_mean"] = float(g[col].mean()) if col in g else None  # older tables lack the split
        for col in ("weak_acc", "student_acc", "ceiling_acc"):
            row[f"{col}_std"] = float(g[col].std(ddof=1)) if len(g) > 1 else None
        pgrs = g["pgr"].dropna().to_numpy(dtype=float)
        row["pgr_defined"] = len(pgrs)
        row["pgr_median"] = float(np.median(pgrs)) if len(pgrs) else None
        row.update(_interval("pgr", pgrs))
        if len(pgrs) == 1:
            row.update(pgr_ci_low=float(g["pgr_ci_low"].dropna().iloc[0]),
                       pgr_ci_high=float(g["pgr_ci_high"].dropna().iloc[0]),
                       pgr_ci_method="95% bootstrap over test rows (one seed)")
        best = g["pgr_best"].dropna().to_numpy(dtype=float) if "pgr_best" in g else np.array([])
        row.update(_interval("pgr_best", best))
        out.append(row)
    return pd.DataFrame(out)


def _interval(name: str, values: np.ndarray) -> dict[str, Any]:
    """``<name>_mean`` with its t-interval over seeds (None where fewer than 2 seeds)."""
    if len(values) < 2:
        return {f"{name}_mean": float(values[0]) if len(values) else None, f"{name}_ci_low": None,
                f"{name}_ci_high": None, f"{name}_ci_method": None}
    mean, lo, hi = metrics.t_interval(values)
    return {f"{name}_mean": mean, f"{name}_ci_low": lo, f"{name}_ci_high": hi,
            f"{name}_ci_method": metrics.T_INTERVAL}


def trial_rows(store: ArtifactStore, cell: Cell, row: dict[str, Any]) -> list[dict[str, Any]]:
    """A search cell's trials with their test accuracy and PGR, measured after the search (report only)."""
    from w2s_ray.search import read_trials

    if cell.config.search is None:
        return []
    import pyarrow.parquet as pq

    test = pq.read_table(store.path(cell.data, "test.parquet"), filesystem=store.fs, columns=["id", "label"])
    test = test.to_pandas()
    best_key = store.manifest(cell.student, verify=False).meta["best"]["trial_key"]
    out = []
    for t in read_trials(store, cell.student).to_dict("records"):
        acc = None
        finished = isinstance(t["test_key"], str)  # None (or NaN from parquet): stopped early, never predicted
        t["stopped_early"] = bool(t["stopped_early"]) and not finished
        if finished:
            preds = test.merge(read_predictions(store, t["test_key"])[["id", "p1"]], on="id", validate="one_to_one")
            acc = metrics.accuracy(preds["label"].to_numpy(), preds["p1"].to_numpy())
        value = metrics.pgr(row["weak_acc"], acc, row["ceiling_acc"]).value if acc is not None else None
        out.append({"dataset": row["dataset"], "weak": row["weak"], "strong": row["strong"], "seed": row["seed"],
                    "method": row["method"], **{k: t[k] for k in ("alpha_max", "warmup_frac", "lr", "objective",
                                                                  "epochs_run", "stopped_early", "trial_key")},
                    "selected": t["trial_key"] == best_key, "student_acc": acc, "pgr": value})
    return out


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def write_results(rows: list[dict[str, Any]], out: Path, run_info: dict[str, Any],
                  agg: pd.DataFrame | None = None, trials: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """results / aggregate / trials as parquet + CSV, and results.json, in ``out``; each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    frames = {"results": pd.DataFrame(rows)}
    if agg is not None:
        frames["aggregate"] = agg
    if trials:
        frames["trials"] = pd.DataFrame(trials)
    paths: dict[str, Path] = {}
    staged: list[tuple[Path, Path]] = []
    for name, frame in frames.items():
        for ext in ("parquet", "csv"):
            final = out / f"{name}.{ext}"
            tmp = final.with_name(f".{final.name}.tmp")
            frame.to_parquet(tmp, index=False) if ext == "parquet" else frame.to_csv(tmp, index=False)
            staged.append((tmp, final))
            paths[ext if name == "results" else f"{name}_{ext}"] = final
    final = out / "results.json"
    tmp = final.with_name(".results.json.tmp")
    doc = {"run": run_info, "results": _json_safe(rows)}
    if agg is not None:
        doc["aggregate"] = _json_safe(agg.to_dict("records"))
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    staged.append((tmp, final))
    paths["json"] = final
    for tmp, final in staged:
        tmp.replace(final)
    return paths


def read_results(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy per-cell table and its aggregate, recomputed from the cells.

    The cells are the record; recomputing keeps a report of an older
    directory in step with this version's aggregate (its columns and intervals).
    """
    results_dir = Path(results_dir)
    if not (results_dir / "results.parquet").is_file():
        raise FileNotFoundError(f"{results_dir} holds no results.parquet (not a w2s-ray results directory)")
    cells = pd.read_parquet(results_dir / "results.parquet")
    ok = cells[cells["status"] == "ok"] if "status" in cells else cells
    return cells, aggregate(ok.to_dict("records"))


def _present(value: Any) -> bool:
    """A value the table holds (None and NaN mean "does not apply")."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def short_loss(r: dict[str, Any]) -> str:
    """xent, logconf(a=0.5), or search:weak(a=0.31) for a searched student."""
    if str(r.get("method", "fixed")).startswith("search"):
        return f"{r['method']}(a={r['best_alpha_max']:.2f})"
    loss = f"{r['loss']}(a={r['alpha_max']:g})" if _present(r.get("alpha_max")) else r["loss"]
    return f"boot:{loss}" if r.get("method") == "bootstrap" else loss


def format_grid(frame: pd.DataFrame) -> str:
    """The terminal table of a sweep: one line per cell, numbers straight from the table."""
    head = (f"{'dataset':20}{'weak':22}{'strong':14}{'loss':22}{'seed':>5}"
            f"{'weak':>8}{'student':>9}{'ceiling':>9}{'PGR':>8}")
    lines = [head]
    for r in frame.to_dict("records"):
        if r.get("status", "ok") != "ok":
            lines.append(f"{r['dataset'][:19]:20}{r['weak'][:21]:22}{r['strong'][:13]:14}{r['method'][:21]:22}"
                         f"{r['seed']:>5}  {str(r['status']).upper()}: {r['reason']}")
            continue
        loss = short_loss(r)
        pgr = f"{r['pgr']:.3f}" if _present(r["pgr"]) else "n/a"
        generative = r.get("generative_finetune", NOT_ADAPTED)
        adapted = "" if generative == NOT_ADAPTED else f"  adapted ({generative})"
        lines.append(f"{r['dataset'][:19]:20}{r['weak'][:21]:22}{r['strong'][:13]:14}{loss:22}{r['seed']:>5}"
                     f"{r['weak_acc']:>8.4f}{r['student_acc']:>9.4f}{r['ceiling_acc']:>9.4f}{pgr:>8}{adapted}")
    return "\n".join(lines)


def format_summary(agg: pd.DataFrame) -> str:
    """One line per grid point over its seeds: mean PGR with its interval (numbers from :func:`aggregate`)."""
    lines = ["PGR over seeds (mean and 95% t-interval; accuracies are means):"]
    for r in agg.to_dict("records"):
        if not _present(r.get("pgr_mean")):
            lines.append(f"PGR  {r['dataset']}: {r['weak']} -> {r['strong']}, {short_loss(r)}: n/a")
            continue
        ci = (f"[{r['pgr_ci_low']:.3f}, {r['pgr_ci_high']:.3f}]" if _present(r.get("pgr_ci_low")) else "")
        lines.append(f"PGR {r['pgr_mean']:>7.3f} {ci:17} {r['n_seeds']} seed(s)  {r['dataset']}: {r['weak']} -> "
                     f"{r['strong']}, {short_loss(r)} ({r['finetune']}); weak {r['weak_acc_mean']:.4f}, student "
                     f"{r['student_acc_mean']:.4f}, ceiling {r['ceiling_acc_mean']:.4f}")
    return "\n".join(lines)


def format_table(row: dict[str, Any]) -> str:
    """The terminal table for one cell (numbers straight from the row)."""
    lines = [f"{'':10}{'test acc':>10}{'± se':>8}{'AUROC':>8}"]
    names = {"weak": f"weak ({row['weak']})", "student": "student", "ceiling": f"ceiling ({row['strong']})"}
    for role in ROLES:
        lines.append(f"{role:10}{row[f'{role}_acc']:>10.4f}{row[f'{role}_acc_se']:>8.4f}{row[f'{role}_auroc']:>8.4f}"
                     f"   {names[role]}")
    pgr = row["pgr"]
    if pgr is None:
        lines.append(f"PGR       n/a ({row['pgr_note']})")
    else:
        lines.append(f"PGR       {pgr:>10.3f} ± {row['pgr_se']:.3f} (bootstrap; 95% CI "
                     f"{row['pgr_ci_low']:.3f} .. {row['pgr_ci_high']:.3f})")
    lines.append(f"agreement {row['agreement']:>10.4f}   (student vs weak, test set; n_test={row['n_test']})")
    return "\n".join(lines)
