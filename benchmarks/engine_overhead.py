"""Engine overhead: one experiment through w2s-ray against a bare in-process PyTorch loop.

Both sides train the same weak model, weak labels, ceiling and student with
the same models, rows, batches, epochs and loss step, on the same machine, in
this one run (engine first, then bare, each from scratch). Prints per-stage
wall times, the total ratio (target on 2 cores: <= 1.25x for the offline
default) and where the difference goes.

    .venv/bin/python benchmarks/engine_overhead.py            # offline default sizes (~10 min on 2 cores)
    .venv/bin/python benchmarks/engine_overhead.py --n 200 --n-test 400 --epochs 1   # quick
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pandas as pd
from common import Timer, accuracy, bare_predict, bare_train, experiment, experiment_args

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.engine.scheduler import execute
from w2s_ray.plan import plan_experiment
from w2s_ray.results import cell_row
from w2s_ray.runtime import local_concurrency


def run_engine(a, out: Path) -> tuple[float, dict[str, float], dict[str, dict[str, float]], dict]:
    shutil.rmtree(out, ignore_errors=True)
    plan = plan_experiment(experiment(a))
    store = ArtifactStore(str(out / "store"))
    lines: list[str] = []
    t0 = time.perf_counter()
    resources = Resources(torch_threads=a.torch_threads, max_concurrent_trials=a.concurrent)
    report = execute(plan, store, resources, str((out / "ray").resolve()), progress=lines.append)
    total = time.perf_counter() - t0
    by_role, inside = {}, {}
    for key, seconds in report.ran.items():
        role = plan.stages[key].role
        by_role[role] = by_role.get(role, 0.0) + seconds
        if plan.stages[key].kind == "train":
            inside[role] = store.manifest(key, verify=False).meta["timing"]
    print("\nengine timeline (s from the start; each stage from when the scheduler started it "
          "to when it was recorded done):")
    for what, start, end in sorted(report.phases, key=lambda p: p[1]):
        print(f"  {start:7.1f} -> {end:7.1f}  ({end - start:6.1f}s)  {what}")
    return total, by_role, inside, cell_row(store, plan.cells[0])


def run_bare(a, data_dir: Path, plan) -> tuple[float, dict[str, float], dict]:
    """Sequential, all cores per stage: weak, labels, ceiling, student, three test predictions."""
    threads = os.cpu_count() or 1
    A, B, test = (pd.read_parquet(data_dir / f"{s}.parquet") for s in ("A", "B", "test"))
    train = {s.role: s for s in plan.stages.values() if s.kind == "train"}
    max_len = a.max_len
    timer = Timer()
    t0 = time.perf_counter()
    with timer("weak"):
        weak, wtok, _ = bare_train(train["weak"].params, A, "label", threads)
    with timer("labels"):
        B = B.assign(p1=bare_predict(weak, wtok, B["text"].to_numpy(), max_len))
    with timer("ceiling"):
        ceiling, ctok, _ = bare_train(train["ceiling"].params, B, "label", threads)
    with timer("student"):
        student, stok, _ = bare_train(train["student"].params, B.drop(columns="label"), "p1", threads)
    accs = {}
    for role, (m, tok) in {"weak": (weak, wtok), "ceiling": (ceiling, ctok), "student": (student, stok)}.items():
        with timer(f"{role} predictions"):
            accs[role] = accuracy(test["label"].to_numpy(), bare_predict(m, tok, test["text"].to_numpy(), max_len))
    return time.perf_counter() - t0, timer.stages, accs


def main() -> None:
    p = experiment_args(__doc__.splitlines()[0])
    p.add_argument("--torch-threads", type=int, default=None, help="per training (default: cores / concurrent)")
    p.add_argument("--concurrent", type=int, default=local_concurrency(),
                   help="trainings at a time (default: as `w2s-ray run` on this machine)")
    a = p.parse_args()
    out = Path(a.out) / "engine_overhead"
    engine_total, engine_stages, inside, row = run_engine(a, out)
    plan = plan_experiment(experiment(a))
    data_dir = ArtifactStore(str(out / "store")).local_dir(plan.cells[0].data)
    bare_total, bare_stages, bare_acc = run_bare(a, data_dir, plan)
    print(f"\nengine overhead, {a.weak} -> {a.strong}, n={a.n}/{a.n}/{a.n_test}, {a.epochs} epoch(s), "
          f"max_len {a.max_len}, {os.cpu_count()} cores, {a.concurrent} training(s) at a time")
    print(f"{'stage':22}{'engine s':>10}{'bare s':>10}{'overhead s':>12}")
    for role in ("data", "weak", "ceiling", "labels", "student", "weak predictions", "ceiling predictions",
                 "student predictions"):
        e, b = engine_stages.get(role, 0.0), bare_stages.get(role, 0.0)
        print(f"{role:22}{e:>10.1f}{b:>10.1f}{e - b:>12.1f}")
    print(f"{'wall':22}{engine_total:>10.1f}{bare_total:>10.1f}{engine_total - bare_total:>12.1f}")
    print(f"\nratio engine / bare (wall): {engine_total / bare_total:.2f}x")
    print("\ninside each engine training (its timing record): launch = fit() called -> worker loop running "
          "(Train controller and worker processes, imports); setup = model load + ingest; loop = the steps; "
          "ckpt = checkpoints, reports, teardown")
    cols = ("fit_s", "launch_s", "setup_s", "loop_s", "checkpoint_report_s")
    print(f"{'training':22}" + "".join(f"{c.split('_')[0]:>9}" for c in cols) + f"{'bare':>9}")
    for role, timing in inside.items():
        print(f"{role:22}" + "".join(f"{timing.get(c, float('nan')):>9.1f}" for c in cols)
              + f"{bare_stages.get(role, 0.0):>9.1f}")
    print("engine stage times are measured inside each stage (Train run, Data job); stages of one layer run "
          "concurrently (ceiling and student share the cores), so they overlap and do not add up to the wall; "
          f"the sum of engine stage times is {sum(engine_stages.values()):.1f}s")
    print(f"accuracies engine: weak {row['weak_acc']:.4f} student {row['student_acc']:.4f} ceiling "
          f"{row['ceiling_acc']:.4f}; bare: weak {bare_acc['weak']:.4f} student {bare_acc['student']:.4f} "
          f"ceiling {bare_acc['ceiling']:.4f}")


if __name__ == "__main__":
    main()
