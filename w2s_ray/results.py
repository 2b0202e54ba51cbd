"""Results rows from committed artifacts: every number is read from a prediction file.

One row per cell: accuracies (with binomial standard errors) and AUROC of the
weak model, the student and the ceiling on the GT test set, student-weak
agreement, PGR with a paired bootstrap, the stage keys and their timings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from w2s_ray import metrics
from w2s_ray.artifacts import ArtifactStore
from w2s_ray.label import read_predictions
from w2s_ray.plan import Cell

ROLES = ("weak", "student", "ceiling")


def _test_frame(store: ArtifactStore, cell: Cell) -> pd.DataFrame:
    import pyarrow.parquet as pq

    test = pq.read_table(store.path(cell.data, "test.parquet"), filesystem=store.fs, columns=["id", "label"])
    frame = test.to_pandas()
    for role, key in (("weak", cell.weak_test), ("student", cell.student_test), ("ceiling", cell.ceiling_test)):
        preds = read_predictions(store, key)[["id", "p1"]].rename(columns={"p1": f"p_{role}"})
        frame = frame.merge(preds, on="id", how="left", validate="one_to_one")
    if frame.isna().any().any():
        raise ValueError(f"predictions do not cover the test set of {cell.data}")
    return frame


def cell_row(store: ArtifactStore, cell: Cell, n_boot: int = 1000) -> dict[str, Any]:
    """The results row of one cell, measured from its committed artifacts."""
    frame = _test_frame(store, cell)
    y = frame["label"].to_numpy()
    cfg = cell.config
    row: dict[str, Any] = {
        "dataset": cfg.dataset, "weak": cfg.weak, "strong": cfg.strong, "loss": cfg.loss.name,
        "alpha_max": cfg.loss.alpha_max if cfg.loss.name == "logconf" else None,
        "warmup_frac": cfg.loss.warmup_frac if cfg.loss.name == "logconf" else None,
        "seed": cfg.split.seed, "n_test": len(y),
    }
    for role in ROLES:
        p = frame[f"p_{role}"].to_numpy()
        acc = metrics.accuracy(y, p)
        row[f"{role}_acc"] = acc
        row[f"{role}_acc_se"] = metrics.accuracy_stderr(acc, len(y))
        row[f"{role}_auroc"] = metrics.auroc(y, p)
    row["agreement"] = metrics.agreement(frame["p_student"], frame["p_weak"])
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
    row["data_key"] = cell.data
    return row


def write_results(rows: list[dict[str, Any]], out: Path, run_info: dict[str, Any]) -> dict[str, Path]:
    """results.parquet, results.csv and results.json in ``out`` (written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    paths = {"parquet": out / "results.parquet", "csv": out / "results.csv", "json": out / "results.json"}
    tmp = {k: p.with_name(f".{p.name}.tmp") for k, p in paths.items()}
    frame.to_parquet(tmp["parquet"], index=False)
    frame.to_csv(tmp["csv"], index=False)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    tmp["json"].write_text(json.dumps({"run": run_info, "results": clean}, indent=1, default=str))
    for k in paths:
        tmp[k].replace(paths[k])
    return paths


def format_table(row: dict[str, Any]) -> str:
    """The terminal table for one cell (numbers straight from the row)."""
    lines = [f"{'':10}{'test acc':>10}{'± se':>8}{'AUROC':>8}"]
    names = {"weak": f"weak ({row['weak']})", "student": f"student", "ceiling": f"ceiling ({row['strong']})"}
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


def config_dict(cell: Cell) -> dict[str, Any]:
    return asdict(cell.config)
