"""Training throughput: samples/s of the Ray Train loop against the bare loop, same model and batches.

The engine side is one ``TorchTrainer`` run (1 worker, all cores) of a ceiling
stage; samples/s is measured inside the worker per epoch (the Train loop's
own report). The bare side runs the identical step function in this process.
Target: ratio >= 0.9.

    .venv/bin/python benchmarks/throughput.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
from common import bare_train, experiment, experiment_args

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.data import build_data_artifact, resolve_dataset
from w2s_ray.plan import plan_experiment
from w2s_ray.runtime import ensure_ray
from w2s_ray.train import fit_train_stage


def main() -> None:
    a = experiment_args(__doc__.splitlines()[0]).parse_args()
    out = Path(a.out) / "throughput"
    shutil.rmtree(out, ignore_errors=True)
    plan = plan_experiment(experiment(a))
    data = next(s for s in plan.stages.values() if s.kind == "data")
    ceiling = next(s for s in plan.stages.values() if s.role == "ceiling")
    store = ArtifactStore(str(out / "store"))
    staging = store.staging_dir()
    meta = build_data_artifact(resolve_dataset("vader"), plan.cells[0].config.split, staging)
    store.commit(data.key, staging, {"rows": meta["rows"]})
    threads = os.cpu_count() or 1
    resources = Resources(worker_cpus=1.0)
    ensure_ray(resources)
    engine = fit_train_stage(ceiling, store, resources, str((out / "ray").resolve()), torch_threads=threads)
    engine_sps = [h["samples_per_s"] for h in engine["history"]]
    B = pd.read_parquet(store.local_dir(data.key) / "B.parquet")
    _, _, bare_sps = bare_train(ceiling.params, B, "label", threads)
    engine_mean = sum(h["samples"] for h in engine["history"]) / sum(h["epoch_s"] for h in engine["history"])
    print(f"\ntraining throughput: {a.strong} on {len(B)} rows, batch {ceiling.params['train']['batch_size']}, "
          f"{a.epochs} epoch(s), max_len {a.max_len}, {threads} threads")
    print(f"Ray Train loop: {engine_mean:.1f} samples/s (per epoch: {', '.join(f'{x:.1f}' for x in engine_sps)})")
    print(f"bare loop:      {bare_sps:.1f} samples/s")
    print(f"ratio Ray Train / bare: {engine_mean / bare_sps:.2f}")


if __name__ == "__main__":
    main()
