"""Probe mode against full fine-tuning: the same alpha grid for one pair, both through the engine, in one run.

Grid: weak -> strong, xent + logconf at 8 alpha_max values (9 students), one
seed; each mode in a fresh artifact store. Probe mode's time includes
computing the frozen features (one Ray Data job per model). A second probe
grid (other alphas) then runs on the same store: its feature stages must load
from the cache, so the benchmark counts the feature stages each probe grid ran
(from the store's commit ledger).

    .venv/bin/python benchmarks/probe_vs_full.py            # offline default sizes: ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import common

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.engine.scheduler import execute
from w2s_ray.plan import plan_experiments
from w2s_ray.results import cell_row
from w2s_ray.spec import spec_from_dict

ALPHAS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9]
SECOND_GRID = [0.15, 0.35, 0.55, 0.8]


def grid(a: argparse.Namespace, finetune: str, alphas: list[float]):
    spec = spec_from_dict({
        "name": f"bench-{finetune}", "datasets": ["vader"], "models": [a.weak, a.strong],
        "losses": ["xent", "logconf"], "alpha_max": alphas, "finetune": finetune,
        "split": {"n_weak": a.n, "n_strong": a.n, "n_test": a.n_test},
        "train": {"epochs": a.epochs, "max_len": a.max_len},
    })
    return plan_experiments(spec.experiments())


def run(plan, store: ArtifactStore, out: Path) -> tuple[float, dict[str, int]]:
    """Wall time, and the stages committed during this run by kind."""
    before = len(store.ledger())
    t0 = time.perf_counter()
    execute(plan, store, Resources(), str((out / "ray").resolve()), progress=lambda _: None)
    seconds = time.perf_counter() - t0
    kinds: dict[str, int] = {}
    for e in store.ledger()[before:]:
        kind = e["key"].split("-")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return seconds, kinds


def best(plan, store: ArtifactStore) -> str:
    rows = [cell_row(store, c, n_boot=200) for c in plan.cells]
    top = max(rows, key=lambda r: r["student_acc"])
    return (f"weak {rows[0]['weak_acc']:.4f}, ceiling {rows[0]['ceiling_acc']:.4f}, best student "
            f"{top['student_acc']:.4f} ({top['loss']}" + (f" a={top['alpha_max']:g})" if top["alpha_max"] else ")"))


def main() -> None:
    p = common.experiment_args(__doc__.splitlines()[0])
    p.set_defaults(n=1000, n_test=2000)  # the offline default sizes
    a = p.parse_args()
    root = Path(a.out) / "probe-vs-full"
    shutil.rmtree(root, ignore_errors=True)
    stores = {m: ArtifactStore(str(root / m / "store")) for m in ("probe", "full")}

    probe_plan = grid(a, "probe", ALPHAS)
    t_probe, k_probe = run(probe_plan, stores["probe"], root / "probe")
    full_plan = grid(a, "full", ALPHAS)
    t_full, k_full = run(full_plan, stores["full"], root / "full")
    second = grid(a, "probe", SECOND_GRID)
    t_second, k_second = run(second, stores["probe"], root / "probe")

    print(f"alpha grid: {a.weak} -> {a.strong}, xent + logconf at {len(ALPHAS)} alpha_max values "
          f"({len(probe_plan.cells)} students), n={a.n} rows per half, {a.n_test} test rows")
    print(f"  full fine-tuning : {t_full:8.1f} s  stages run {k_full}")
    print(f"                     {best(full_plan, stores['full'])}")
    print(f"  probe mode       : {t_probe:8.1f} s  stages run {k_probe} (features included)")
    print(f"                     {best(probe_plan, stores['probe'])}")
    print(f"  wall-time ratio full / probe: {t_full / t_probe:.1f}x")
    print(f"  second probe grid ({len(SECOND_GRID)} new alphas, same store): {t_second:.1f} s, "
          f"feature stages run: {k_second.get('features', 0)} (cached: computed once)")


if __name__ == "__main__":
    main()
