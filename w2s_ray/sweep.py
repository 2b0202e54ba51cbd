"""A sweep end to end: spec → plan → execution on Ray → results table → report.

``w2s-ray run`` (one cell) and ``w2s-ray sweep`` (a grid) share this path;
they differ only in how many cells the plan holds. Where things go:

* the artifact store: ``resources.storage`` or ``<out>/store`` (shared by
  every run and sweep using it, so a stage any of them built is reused);
* Tune and Train run state: ``<storage>/ray``;
* results: ``<out>/sweeps/<name>/`` (tidy table, aggregate, report).

Re-running the same command resumes: committed stages are loaded, an
interrupted training resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.plan import Plan

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Layout:
    """Where a sweep's store, Ray state and results live."""

    store_uri: str
    ray_storage: str
    results_dir: Path

    @classmethod
    def of(cls, out: Path, name: str, storage: str | None = None, results_dir: Path | None = None) -> Layout:
        if storage and "://" in storage:
            base, sep, query = storage.partition("?")  # s3://b/p?region=x: sub-paths go before the query
            store_uri, ray_storage = (f"{base.rstrip('/')}/{sub}{sep}{query}" for sub in ("store", "ray"))
        else:
            root = Path(storage).expanduser().resolve() if storage else out.resolve()
            store_uri, ray_storage = str(root / "store"), str(root / "ray")
        return cls(store_uri, ray_storage, results_dir or out / "sweeps" / name)


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    paths: dict[str, Path]
    stages_run: int
    stages_loaded: int
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)  # stage name -> root cause
    blocked: int = 0  # stages never started because an input failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def run_plan(plan: Plan, layout: Layout, resources: Resources, run_info: dict[str, Any],
             progress: Progress = print, report: bool = True, tracker: Any = None) -> SweepResult:
    """Execute ``plan`` (skipping committed stages), then write results and figures.

    Every complete cell gets its row; a cell that needs a stage that failed
    (or was blocked by one) gets a row with ``status`` failed / blocked and
    the reason, so a sweep with one broken cell still reports all the others.
    ``tracker`` (:class:`~w2s_ray.tracking.Tracker`) logs each training this
    run commits and each cell it completes.
    """
    from w2s_ray.engine.scheduler import execute
    from w2s_ray.plan import cell_stage_keys
    from w2s_ray.results import aggregate, cell_row, incomplete_row, trial_rows, write_results

    store = ArtifactStore(layout.store_uri)
    t0 = time.perf_counter()
    done = execute(plan, store, resources, layout.ray_storage, progress=progress,
                   on_commit=tracker.stage if tracker is not None else None)
    rows = []
    for cell in plan.cells:
        status, reason = cell_status(plan, cell, done.failed, done.blocked)
        rows.append(cell_row(store, cell) if status == "ok" else incomplete_row(cell, status, reason))
    complete = [(cell, row) for cell, row in zip(plan.cells, rows) if row["status"] == "ok"]
    if tracker is not None:  # cells this run finished (a resumed sweep does not log a cell twice)
        for cell, row in complete:
            if set(cell_stage_keys(cell)) & set(done.ran):
                tracker.cell(row)
    trials = [t for cell, row in complete for t in trial_rows(store, cell, row)]
    seconds = time.perf_counter() - t0
    info = {**run_info, "stages_run": len(done.ran), "stages_loaded": len(done.cached),
            "stages_failed": len(done.failed), "stages_blocked": len(done.blocked), "wall_seconds": seconds,
            "store": store.uri}
    paths = write_results(rows, layout.results_dir, info, aggregate([r for _, r in complete]), trials)
    if report and len(complete) > 1:
        from w2s_ray.report import write_report

        paths.update(write_report(layout.results_dir))
    failed = {plan.stages[k].name: cause for k, cause in done.failed.items()}
    return SweepResult(rows, paths, len(done.ran), len(done.cached), seconds, failed, len(done.blocked))


def cell_status(plan: Plan, cell: Any, failed: dict[str, str], blocked: dict[str, str]) -> tuple[str, str | None]:
    """ok, or failed / blocked with the reason: the failed stage's name and root cause."""
    from w2s_ray.plan import cell_stage_keys

    keys = cell_stage_keys(cell)
    for key in keys:
        if key in failed:
            return "failed", f"{plan.stages[key].name}: {failed[key]}"
    for key in keys:
        if key in blocked:
            culprit = blocked[key]
            return "blocked", f"needs {plan.stages[key].name}, blocked by {plan.stages[culprit].name}: " \
                              f"{failed.get(culprit, '')}"
    return "ok", None
