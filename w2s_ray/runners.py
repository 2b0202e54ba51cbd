"""What each stage kind runs, and where: the one table from stage kind to its runner.

A runner takes a stage and its :class:`StageContext` and returns the
committed artifact's meta (with ``seconds``). Where it runs:

* ``trial``: a Ray Tune function trial (trainings: it launches a TorchTrainer);
* ``thread``: a driver thread (data builds, and Ray Data jobs, which drive
  their streaming execution from the driver as Ray's batch-inference examples do);
* ``task``: a Ray task (linear heads; alpha searches, whose own Tune
  experiment needs a process of its own).

The scheduler (:mod:`w2s_ray.scheduler`) knows nothing else about a kind; a
benchmark may hand it another table (the simulated cluster sleeps instead).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.plan import TRAINING_KINDS, Plan, Stage

Meta = dict[str, Any]


@dataclass(frozen=True)
class StageContext:
    """Everything a runner needs besides the stage; picklable (it travels to trials and tasks)."""

    store_uri: str
    resources: Resources
    storage_path: str
    threads: int  # torch threads: a function of the plan and the resources profile (see stage_threads)

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.store_uri)


@dataclass(frozen=True)
class Runner:
    run: Callable[[Stage, StageContext], Meta]
    where: str  # "trial", "thread" or "task"
    describe: Callable[[Stage, Meta], str]
    task_cpus: float = 0.0  # what a "task" runner reserves (a search's trials reserve their own)


def run_rows(stage: Stage, ctx: StageContext) -> Meta:
    """Build a rows artifact (test rows and the pool) from the dataset the stage was planned from."""
    import time

    from w2s_ray.config import SplitSizes
    from w2s_ray.data import build_rows_artifact, resolve_dataset

    t0 = time.perf_counter()
    source = stage.params["source"]
    spec = resolve_dataset(source.partition(":")[2] if source.startswith("file:") else stage.params["dataset"])
    with ctx.store.building(stage.key) as build:
        meta = build_rows_artifact(spec, SplitSizes(**stage.params["sizes"]), build.dir)
        build.meta = meta = {"stage": stage.name, "params": stage.params, **meta,
                             "seconds": time.perf_counter() - t0}
    return meta


def run_data(stage: Stage, ctx: StageContext) -> Meta:
    """Deal one seed's A / B / test (/ val) parquet files from a rows artifact."""
    import time

    import pandas as pd

    from w2s_ray.config import SplitConfig
    from w2s_ray.data import ROWS_FILE, build_data_artifact

    t0 = time.perf_counter()
    store, rows_key = ctx.store, stage.inputs["rows"]
    rows = pd.read_parquet(store.path(rows_key, ROWS_FILE), filesystem=store.fs)
    column = store.manifest(rows_key, verify=False).meta.get("input_column", "text")
    with store.building(stage.key) as build:
        meta = build_data_artifact(rows, SplitConfig(**stage.params["split"]), build.dir, column)
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs, **meta,
                             "seconds": time.perf_counter() - t0}
    return meta


def run_training(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.train import fit_train_stage

    return fit_train_stage(stage, ctx.store, ctx.resources, ctx.storage_path, ctx.threads)


def run_adaptation(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.adapt import fit_adapt_stage

    return fit_adapt_stage(stage, ctx.store, ctx.resources, ctx.storage_path, ctx.threads)


def run_inference(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.label import run_infer_stage

    return run_infer_stage(stage, ctx.store, actors=1, threads=ctx.threads, use_gpu=ctx.resources.use_gpu)


def run_features(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.probe import run_features_stage

    return run_features_stage(stage, ctx.store, threads=ctx.threads, use_gpu=ctx.resources.use_gpu)


def run_head(stage: Stage, ctx: StageContext) -> Meta:
    """A linear head (``probe``) or its predictions (``probeinfer``) on cached features."""
    import torch

    from w2s_ray.probe import PROBE_RUNNERS

    torch.set_num_threads(ctx.threads)
    return PROBE_RUNNERS[stage.kind](stage, ctx.store_uri)


def run_classical(stage: Stage, ctx: StageContext) -> Meta:
    """A TF-IDF or synthetic supervisor (``classical``) or its predictions (``classicalinfer``)."""
    from w2s_ray.classical import run_classical_infer_stage, run_classical_stage

    run = run_classical_stage if stage.kind == "classical" else run_classical_infer_stage
    return run(stage, ctx.store_uri)


def run_search(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.search import run_search_stage

    return run_search_stage(stage, ctx.store, ctx.resources, ctx.storage_path, progress=lambda _: None)


def _rows(stage: Stage, meta: Meta) -> str:
    rows = meta.get("rows")
    n = sum(rows.values()) if isinstance(rows, dict) else rows
    return f"{n} rows" + (" cached" if stage.kind == "features" else "")


def _trained(stage: Stage, meta: Meta) -> str:
    return "trained" + (f", best epoch {meta['selected_epoch']}" if meta.get("selected_epoch") else "")


def _fitted(stage: Stage, meta: Meta) -> str:
    if "reached_rate" in meta:
        return f"fitted: disagrees with GT on {meta['reached_rate']:.3f} of A (asked {meta['rate']:g})"
    return f"fitted on {meta['rows']} rows" + (f", {meta['terms']} terms" if "terms" in meta else "")


def _adapted(stage: Stage, meta: Meta) -> str:
    return "adapted"  # a trial reports only that it committed (its LM losses are in the artifact's history)


def _selected(stage: Stage, meta: Meta) -> str:
    b = meta["best"]
    return (f"selected a={b['alpha_max']:g} w={b['warmup_frac']:g} (validation objective {meta['objective']}: "
            f"{b['objective']:.4f}); {meta['finished']}/{meta['trials']} trials finished")


RUNNERS: dict[str, Runner] = {
    "rows": Runner(run_rows, "thread", _rows),
    "data": Runner(run_data, "thread", _rows),
    "train": Runner(run_training, "trial", _trained),
    "adapt": Runner(run_adaptation, "trial", _adapted),
    "infer": Runner(run_inference, "thread", _rows),
    "features": Runner(run_features, "thread", _rows),
    "probe": Runner(run_head, "task", _rows, task_cpus=1),
    "probeinfer": Runner(run_head, "task", _rows, task_cpus=1),
    "search": Runner(run_search, "task", _selected),
    "classical": Runner(run_classical, "task", _fitted, task_cpus=1),
    "classicalinfer": Runner(run_classical, "task", _rows, task_cpus=1),
}
SMALL_KINDS = ("probe", "probeinfer", "classical", "classicalinfer")  # one thread, one CPU: seconds each


def stage_threads(plan: Plan, resources: Resources, cores: int | None = None) -> dict[str, int]:
    """Torch threads per stage: a function of the plan and the resources profile only, never of the schedule.

    The thread count changes a model's floating-point sums, so a stage
    retried or resumed must get the count it had in the undisturbed run.
    Trainings share the cores with the trainings of their plan layer that can
    run side by side (:meth:`Plan.layers` keeps a layer's trainings alike);
    Ray Data jobs use every core; linear heads one.
    """
    cores = cores or os.cpu_count() or 1
    if resources.torch_threads:
        return dict.fromkeys(plan.stages, resources.torch_threads)
    threads = {key: 1 if s.kind in SMALL_KINDS else cores for key, s in plan.stages.items()}
    for layer in plan.layers():
        trainings = [s for s in layer if s.kind in TRAINING_KINDS]
        side_by_side = max(1, min(len(trainings), resources.max_concurrent_trials))
        for s in trainings:
            threads[s.key] = max(1, cores // side_by_side)
    return threads
