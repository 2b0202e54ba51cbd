"""The reproduction document's numbers, generated from the files the engine wrote.

``docs/reproduction.md`` (and the README's summary of it) hold prose written
by people and tables written by this module. A table lives between two
markers, ``<!-- table:NAME -->`` and ``<!-- /table -->``; :func:`render`
replaces what is between them with :func:`tables`' Markdown, built from the
CSVs in ``docs/reproduction/`` alone:

* ``results.csv``: one row per cell (the sweep's results table, status ok);
* ``claims.csv``: every comparison of :mod:`w2s_ray.claims`;
* ``run.csv``: how the sweep ran (cells, stages, wall time, machine).

:func:`export` writes those CSVs from a sweep's results directory. A test
renders the committed documents from the committed CSVs and fails when a
table was typed by hand or left behind by a new run.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from w2s_ray import claims as claims_mod
from w2s_ray.models import is_control
from w2s_ray.report import base_name, loss_label, markdown_table, with_modes
from w2s_ray.results import aggregate, read_results

DOCS = (Path("docs/reproduction.md"), Path("README.md"))
CSV_DIR = Path("docs/reproduction")
RESULT_COLUMNS = [  # what the tables and claims read; the run's own results.csv has every column
    "dataset", "weak", "strong", "finetune", "generative_finetune", "loss", "method", "chain", "alpha_max",
    "warmup_frac", "seed", "status", "n_test", "weak_acc", "student_acc", "ceiling_acc", "agreement",
    "agreement_weak_right", "agreement_weak_wrong", "pgr", "pgr_ci_low", "pgr_ci_high", "pgr_best",
    "weak_stop_epoch", "ceiling_stop_epoch", "student_stop_epoch", "weak_seconds", "ceiling_seconds",
    "student_seconds"]
MARKER = re.compile(r"(<!-- table:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


# -- export: the engine's files -> docs/reproduction/*.csv ---------------------------------------------


def export(results_dir: Path, out: Path = CSV_DIR, make_seconds: float | None = None) -> dict[str, Path]:
    """``results.csv``, ``claims.csv`` and ``run.csv`` in ``out`` from a sweep's results directory."""
    cells, _ = read_results(results_dir)
    run = json.loads((Path(results_dir) / "results.json").read_text())["run"]
    ok = cells[cells["status"] == "ok"]
    out.mkdir(parents=True, exist_ok=True)
    table = ok[[c for c in RESULT_COLUMNS if c in ok]].sort_values(["dataset", "finetune", "weak", "strong", "loss",
                                                                     "seed"], kind="stable")
    paths = {"results": out / "results.csv", "claims": out / "claims.csv", "run": out / "run.csv"}
    table.to_csv(paths["results"], index=False, float_format="%.6g")
    claims_mod.comparisons(table).to_csv(paths["claims"], index=False, float_format="%.6g")
    facts = {"sweep": run.get("name"), "cells": len(cells), "cells_ok": len(ok),
             "seeds": ok["seed"].nunique(), "datasets": ok["dataset"].nunique(),
             "stages_run": run.get("stages_run"), "stages_loaded": run.get("stages_loaded"),
             "stages_failed": run.get("stages_failed"), "sweep_seconds": run.get("wall_seconds"),
             "make_seconds": make_seconds, "cpus": os.cpu_count(), "machine": platform.processor() or
             platform.machine(), "python": platform.python_version()}
    pd.DataFrame([facts]).to_csv(paths["run"], index=False, float_format="%.6g")
    return paths


# -- tables: docs/reproduction/*.csv -> Markdown -------------------------------------------------------


def _interval(mean: Any, lo: Any, hi: Any) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3f}" if pd.isna(lo) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _student(row: pd.Series) -> str:
    """The strong model, or for a bootstrapping chain every step after the weak model."""
    chain = row.get("chain")
    return str(chain).split(" -> ", 1)[1] if isinstance(chain, str) and chain else str(row["strong"])


def _grid(results: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point, with names marked by mode (``[probe]``) as in the report."""
    agg = with_modes(aggregate(results.to_dict("records")))
    agg["control"] = agg["weak"].map(base_name).map(is_control)
    return agg.sort_values(["dataset", "finetune", "method", "weak", "strong", "loss"], kind="stable")


def grid_table(results: pd.DataFrame, controls: bool, loss: str | None = None) -> str:
    """The grid points (the controls' or the paper's), optionally of one loss, with PGR's interval."""
    agg = _grid(results)
    agg = agg[(agg["control"] == controls) & ((agg["loss"] == loss) if loss else True)]
    show = pd.DataFrame({
        "dataset": agg["dataset"],
        "supervisor": agg["weak"],
        "student": agg.apply(_student, axis=1),
        "loss": agg.apply(loss_label, axis=1),
        "seeds": agg["n_seeds"],
        "weak acc": agg["weak_acc_mean"],
        "student acc": agg["student_acc_mean"],
        "ceiling acc": agg["ceiling_acc_mean"],
        "PGR [95% CI]": [_interval(*r) for r in agg[["pgr_mean", "pgr_ci_low", "pgr_ci_high"]].to_numpy()],
        "agreement": agg["agreement_mean"],
    })
    return markdown_table(show)


def claims_table(by_dataset: pd.DataFrame) -> str:
    return markdown_table(by_dataset.drop(columns=["mean estimate"]))


def signs_table(by_dataset: pd.DataFrame) -> str:
    return markdown_table(claims_mod.sign_counts(by_dataset))


def comparisons_table(comps: pd.DataFrame, claim: str, extra: dict[str, str] | None = None) -> str:
    rows = comps[comps["claim"] == claim]
    if rows.empty:
        return "(no comparison of this kind in this run)"
    show = pd.DataFrame({"dataset": rows["dataset"], "comparison": rows["comparison"], "seeds": rows["n_seeds"],
                         **{label: rows[col] for col, label in (extra or {}).items()},
                         "estimate [95% CI]": [_interval(*r) for r in
                                               rows[["estimate", "ci_low", "ci_high"]].to_numpy()],
                         "verdict": rows["verdict"]})
    return markdown_table(show)


def _minutes(seconds: Any) -> str:
    return "n/a" if pd.isna(seconds) else f"{seconds / 60:.1f} min"


def run_table(run: pd.DataFrame) -> str:
    r = run.iloc[0]
    show = pd.DataFrame([{"sweep": r["sweep"], "cells (ok / all)": f"{r['cells_ok']} / {r['cells']}",
                          "datasets": r["datasets"], "seeds": r["seeds"],
                          "stages run / loaded / failed": f"{r['stages_run']} / {r['stages_loaded']} / "
                                                          f"{r['stages_failed']}",
                          "sweep wall time": _minutes(r["sweep_seconds"]),
                          "make reproduce wall time": _minutes(r["make_seconds"]),
                          "machine": f"{r['cpus']} CPUs ({r['machine']}), Python {r['python']}"}])
    return markdown_table(show)


def _read(csv_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    names = ("results", "claims", "run")
    missing = [n for n in names if not (csv_dir / f"{n}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"{csv_dir} lacks {', '.join(f'{n}.csv' for n in missing)} "
                                "(w2s-ray reproduction --results DIR writes them)")
    results, comps, run = (pd.read_csv(csv_dir / f"{n}.csv") for n in names)
    return results, comps, run


def tables(csv_dir: Path = CSV_DIR) -> dict[str, str]:
    """Every table the documents may hold, by marker name, from the CSVs alone."""
    results, comps, run = _read(csv_dir)
    by_dataset = claims_mod.summary(comps)  # the per-dataset verdicts both claim tables read
    builders: dict[str, Callable[[], str]] = {
        "run": lambda: run_table(run),
        "grid": lambda: grid_table(results, controls=False),
        "grid-xent": lambda: grid_table(results, controls=False, loss="xent"),
        "controls": lambda: grid_table(results, controls=True),
        "claims": lambda: claims_table(by_dataset),
        "signs": lambda: signs_table(by_dataset),
        "misfit": lambda: comparisons_table(comps, "h"),
        "control-checks": lambda: comparisons_table(
            comps, "controls", {"random_pgr": "random-flips PGR", "learnable_pgr": "learnable-flips PGR"}),
        **{f"claim-{c}": (lambda c=c: comparisons_table(comps, c)) for c in "abcdefg"},
    }
    return {name: build() for name, build in builders.items()}


# -- render: Markdown with markers -> the same Markdown, tables rebuilt ----------------------------------


def render(text: str, built: dict[str, str], where: str = "document") -> str:
    """``text`` with every marked table replaced by ``built[name]``; an unknown name is an error."""
    def table(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in built:
            raise KeyError(f"{where}: no table named {name!r} (known: {', '.join(sorted(built))})")
        return f"{m.group(1)}{built[name]}\n{m.group(4)}"

    return MARKER.sub(table, text)


def _changes(root: Path, docs: tuple[Path, ...], csv_dir: Path) -> list[tuple[Path, str]]:
    """(document, its text with the tables rebuilt) for every document under ``root`` whose tables differ."""
    built = tables(root / csv_dir)
    out = []
    for p in (root / d for d in docs):
        if p.is_file():
            text = p.read_text()
            new = render(text, built, str(p))
            if new != text:
                out.append((p, new))
    return out


def stale(root: Path = Path("."), docs: tuple[Path, ...] = DOCS, csv_dir: Path = CSV_DIR) -> list[Path]:
    """The documents (under ``root``) whose marked tables differ from what the CSVs give."""
    return [p for p, _ in _changes(root, docs, csv_dir)]


def rewrite(root: Path = Path("."), docs: tuple[Path, ...] = DOCS, csv_dir: Path = CSV_DIR) -> list[Path]:
    """Rebuild the marked tables of ``docs`` (under ``root``) in place; returns the ones that changed."""
    changes = _changes(root, docs, csv_dir)
    for p, new in changes:
        p.write_text(new)
    return [p for p, _ in changes]
