"""Deduplication: a grid run by the engine (shared stages) against the naive plan (private stages per cell).

The naive plan is what pairwise scripts do (the reference code's way): every
cell trains its own weak model, weak labels and ceiling. Both plans run through
the same engine in this one run, each in a fresh store; the benchmark prints
the trainings each performed (counted from the store's commit ledger) and the
wall-time ratio.

Grid: 2 weak x 3 strong x 3 alpha_max (logconf), 1 seed = 18 cells.

    .venv/bin/python benchmarks/dedup.py              # n=64 rows, 1 epoch: ~a quarter hour on 2 cores
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import common  # noqa: F401  (environment + sys.path)

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.engine.scheduler import execute
from w2s_ray.plan import plan_experiments
from w2s_ray.spec import spec_from_dict

WEAK = ["minilm-l6-1l", "minilm-l6-2l"]
STRONG = ["minilm-l6-2l", "minilm-l3", "minilm-l6"]


def grid(n: int, epochs: int):
    spec = spec_from_dict({
        "name": "dedup", "datasets": ["vader"], "models": WEAK + STRONG[1:],
        "pairs": [[w, s] for w in WEAK for s in STRONG], "losses": ["logconf"], "alpha_max": [0.25, 0.5, 0.75],
        "split": {"n_weak": n, "n_strong": n, "n_test": n}, "train": {"epochs": epochs, "max_len": 32},
    })
    return spec.experiments()


def run(plan, out: Path) -> tuple[float, int, int]:
    shutil.rmtree(out, ignore_errors=True)
    store = ArtifactStore(str(out / "store"))
    t0 = time.perf_counter()
    execute(plan, store, Resources(), str((out / "ray").resolve()), progress=lambda _: None)
    seconds = time.perf_counter() - t0
    ledger = [e["key"] for e in store.ledger()]
    return seconds, sum(k.startswith("train-") for k in ledger), len(ledger)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", default="runs/bench")
    a = p.parse_args()
    cells = grid(a.n, a.epochs)
    shared, naive = plan_experiments(cells), plan_experiments(cells, share=False)
    t_shared, trained_shared, stages_shared = run(shared, Path(a.out) / "dedup-shared")
    t_naive, trained_naive, stages_naive = run(naive, Path(a.out) / "dedup-naive")
    print(f"\ndeduplication: {len(cells)} cells ({len(WEAK)} weak x {len(STRONG)} strong x 3 alpha_max), "
          f"n={a.n}, {a.epochs} epoch(s)")
    print(f"{'plan':10}{'trainings':>11}{'stages':>8}{'wall s':>9}")
    print(f"{'engine':10}{trained_shared:>11}{stages_shared:>8}{t_shared:>9.1f}")
    print(f"{'naive':10}{trained_naive:>11}{stages_naive:>8}{t_naive:>9.1f}")
    print(f"\ntrainings saved: {trained_naive - trained_shared} of {trained_naive}; "
          f"wall-time ratio naive / engine: {t_naive / t_shared:.2f}x")


if __name__ == "__main__":
    main()
