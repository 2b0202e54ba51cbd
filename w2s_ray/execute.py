"""Run a :class:`~w2s_ray.plan.Plan` on Ray, layer by layer, skipping what exists.

* ``data`` stages run in the driver (small pyarrow work);
* the ``train`` stages of a layer run as one Ray Tune experiment, one function
  trial per stage, each launching a ``TorchTrainer`` (the Train V2 pattern);
* ``infer`` stages run as Ray Data batch-inference jobs;
* probe mode: ``features`` stages are Ray Data jobs, ``probe`` / ``probeinfer``
  stages (a linear head on cached features) run as concurrent Ray tasks.

A stage whose artifact is committed and verifies is never re-run; a plan whose
stages all exist does not even start Ray. Trials check the store again when
they start, so a retried or resumed experiment never trains a stage twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.plan import Plan, Stage

Progress = Callable[[str], None]

RAY_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Ctrl-C raises KeyboardInterrupt at once: committed artifacts and Train
    # checkpoints (not Tune's experiment state) are what a re-run resumes from.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    "RAY_DATA_LOG_LEVEL": "ERROR",  # Ray Data logs every job's plan; the driver prints our own progress
    # The raylet warns once the worker processes it started exceed 4x this
    # (default: the core count, 2 here); trials, Train workers and Data actors
    # legitimately need ~20 on a small machine.
    # Train's controller polls its workers this often (default 2 s): a finished
    # training is noticed sooner; a slow poll is only a missed check, not a failure.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_worker_maximum_startup_concurrency": "8",  # with verbose=0 the legacy reporter is silent; we print our own progress
}


class StageFailed(RuntimeError):
    pass


# Set by the CLI's SIGINT handler. Python raises KeyboardInterrupt in the main
# thread, but a blocking Ray Data job can swallow it and run on; execute()
# checks this flag between stages, so Ctrl-C always stops at the next one.
INTERRUPTED = threading.Event()


def _stop_if_interrupted() -> None:
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


@dataclass
class ExecutionReport:
    """What ran and what was loaded, with measured wall times per stage."""

    ran: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)  # (what, wall s) in the order they ran


ORPHAN_AGE_S = 60.0


def release_orphan_placement_groups(min_age_s: float = ORPHAN_AGE_S) -> list[str]:
    """Remove placement groups that hold resources for no live actor.

    When a scheduler (ASHA) stops a Tune trial, Tune kills the trial actor and
    with it the TorchTrainer controller it owns; Train V2's worker placement
    group is then left reserved until the job ends, starving later trials
    (seen here with Ray 2.60: the search stalls with a PENDING worker group).
    A group older than ``min_age_s`` with no ALIVE actor in it is such a
    leftover: live worker groups get their actors within seconds.
    """
    import time as _time

    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors, list_placement_groups

    now_ns = _time.time_ns()
    used = {a.placement_group_id for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True,
                                                      raise_on_missing_output=False)
            if a.placement_group_id}
    released = []
    for pg in list_placement_groups(filters=[("state", "=", "CREATED")], detail=True,
                                    raise_on_missing_output=False):
        created = int((pg.stats or {}).get("creation_request_received_ns") or now_ns)
        if pg.placement_group_id not in used and not pg.is_detached and now_ns - created > min_age_s * 1e9:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg.placement_group_id))))
            released.append(pg.placement_group_id)
    return released


def _job_env_vars() -> dict[str, str]:
    """The env vars of the Ray Job this driver runs in (``ray job submit``), if any."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


# A local cluster serves one sweep on one machine: no Prometheus scrape of
# Train metrics, no spot preemption to watch, no idle worker processes started
# ahead of need. Each of these keeps a Python process or thread waking up during
# training; measured on 2 cores (Tune -> TorchTrainer, fixed MiniLM steps): the
# loop ran 12-15% slower than a bare process with them, 4-7% without them.
LOCAL_RAY_ENV = {
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_enable_worker_prestart": "0",
}


def ensure_ray(resources: Resources, dashboard: bool = False) -> None:
    """Connect to ``resources.address`` or start a local cluster sized for trials + ingest.

    A local cluster starts the dashboard only when asked (``dashboard`` or
    ``resources.dashboard``): its processes cost the loop ~3% on 2 cores.
    """
    import ray

    if ray.is_initialized():
        return
    local = not resources.address
    wanted = {**RAY_ENV, **(LOCAL_RAY_ENV if local else {})}
    for k, v in wanted.items():
        os.environ.setdefault(k, v)
    job_env = _job_env_vars()  # ray.init refuses to be given a Ray Job's own env_vars again
    env_vars = {k: os.environ[k] for k in list(wanted) + ["HF_HUB_OFFLINE", "W2S_RAY_HOME"]
                if k in os.environ and k not in job_env}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "ERROR"}
    if not local:
        ray.init(address=resources.address, **kwargs)
    else:
        cores = os.cpu_count() or 1
        ray.init(num_cpus=resources.num_cpus or 2 * cores, include_dashboard=dashboard or resources.dashboard,
                 **kwargs)


class EpochLog:
    """A Ray actor that collects per-epoch metrics of a layer's trainings for the driver to print.

    One per layer instead of Tune's per-trial result queue
    (``TuneReportCallback``): that is a process per trial, polled five times a
    second, beside training on a small machine. The driver drains this one
    once a second.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def put(self, stage_key: str, metrics: dict[str, Any]) -> None:
        self.items.append((stage_key, metrics))

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        items, self.items = self.items, []
        return items


def epoch_reporter(log: Any, stage_key: str) -> Any:
    """A Train callback (it runs in the TorchTrainer's controller) that sends each epoch's metrics to ``log``."""
    import ray.train

    class EpochReporter(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):  # noqa: ANN001
            log.put.remote(stage_key, metrics[0])  # fire and forget: progress must never stall training

    return EpochReporter()


def epoch_line(name: str, m: dict[str, Any]) -> str:
    return f"    {name}: epoch {m['epoch']}/{m['epochs']} loss {m['train_loss']:.4f} ({m['samples_per_s']:.1f} rows/s)"


class _TrialProgress:
    """Tune callback: prints the epochs in ``log`` (at most once a second) and trial failures."""

    def __new__(cls, stages: dict[str, Stage], progress: Progress, log: Any):
        import ray
        from ray import tune

        class Callback(tune.Callback):
            last = 0.0

            def on_step_end(self, iteration, trials, **info):  # noqa: ANN001
                if time.monotonic() - self.last >= 1.0:
                    self.flush()

            def on_experiment_end(self, trials, **info):  # noqa: ANN001
                self.flush()

            def flush(self) -> None:
                self.last = time.monotonic()
                try:
                    items = ray.get(log.drain.remote(), timeout=10)
                except ray.exceptions.RayError:  # progress lines are lost, never the run
                    return
                for key, m in items:
                    progress(epoch_line(stages[key].name, m))

            def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
                progress(f"    {stages[trial.config['stage']].name}: trial failed (Tune retries per FailureConfig)")

        return Callback()


def train_trial(config: dict[str, Any], stages: dict[str, Stage], store_uri: str, resources: Resources,
                storage_path: str, torch_threads: int, log: Any) -> None:
    """A Tune function trial: one train stage as a TorchTrainer, then commit."""
    from ray import tune

    from w2s_ray.train import fit_train_stage

    stage = stages[config["stage"]]
    store = ArtifactStore(store_uri)
    if store.exists(stage.key):  # committed by an earlier attempt of this trial
        tune.report({"committed": 1, "cached": 1})
        return
    meta = fit_train_stage(stage, store, resources, storage_path, torch_threads,
                           callbacks=[epoch_reporter(log, stage.key)])
    tune.report({"committed": 1, "cached": 0, "seconds": meta["seconds"]})


def local_concurrency(cores: int | None = None) -> int:
    """Trainings at a time for a single run on this machine: two, or one on a single core.

    Two side-by-side trainings with one thread each beat one training with
    two threads after the other on 2 cores (MiniLM-L6 steps: 1.09x the
    throughput, as two threads scale 1.81x, not 2x), and each one's launch
    and checkpoint overlap the other's steps. That pays only where the two
    take about as long: :meth:`Plan.layers` puts a ceiling beside the
    students, not beside the small weak model, so it does.
    """
    return min(2, cores or os.cpu_count() or 1)


def trial_resources(resources: Resources) -> dict[str, float]:
    """What a trial's driver (the Tune function that runs a TorchTrainer) reserves.

    With ``driver_resource`` set, drivers land only on nodes that offer that
    custom resource (on-demand nodes in ``cluster/``), so losing a spot node
    costs a Train worker (retried from its checkpoint), never a trial driver.
    """
    request = {"CPU": resources.trial_cpus}
    if resources.driver_resource:
        request[resources.driver_resource] = 0.01
    return request


def layer_threads(layer_trainings: int, resources: Resources) -> int:
    """Torch threads per training: the cores shared by the trainings of the plan's layer that run side by side.

    Counted over the whole layer, cached stages included: the thread count
    changes a model's floating-point sums, so a stage trained again after an
    interruption must get the same count as in the undisturbed run.
    """
    side_by_side = max(1, min(layer_trainings, resources.max_concurrent_trials))
    return resources.torch_threads or max(1, (os.cpu_count() or 1) // side_by_side)


def _run_train_layer(stages: list[Stage], threads: int, store: ArtifactStore, resources: Resources,
                     storage_path: str, progress: Progress) -> None:
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    concurrent = min(len(stages), resources.max_concurrent_trials)
    by_key = {s.key: s for s in stages}
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    log = ray.remote(num_cpus=0)(EpochLog).options(scheduling_strategy=here).remote()  # lives as long as the driver
    trainable = tune.with_parameters(train_trial, stages=by_key, store_uri=store.uri, resources=resources,
                                     storage_path=storage_path, torch_threads=threads, log=log)
    digest = hashlib.sha256("".join(sorted(by_key)).encode()).hexdigest()[:12]
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(resources)),
        param_space={"stage": tune.grid_search(list(by_key))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=f"train-layer-{digest}",
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            callbacks=[_TrialProgress(by_key, progress, log)],
            verbose=0,
        ),
    )
    try:
        with quiet_tune_logs():
            grid = tuner.fit()
    finally:
        ray.kill(log)
    failed = [f"{by_key[r.config['stage']].name}: {_root_cause(r.error)} (trial log: {r.path})"
              for r in grid if r.error is not None]
    missing = [s.name for s in stages if not store.exists(s.key)]
    if failed or missing:
        raise StageFailed("training failed: " + ("; ".join(failed) or ", ".join(missing)))


@contextlib.contextmanager
def quiet_tune_logs():
    """Tune logs each failed attempt with a full traceback; we report the root cause once instead."""
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.train")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _root_cause(error: BaseException | None) -> str:
    """The last line of a remote traceback: the exception the user's code raised."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def execute(plan: Plan, store: ArtifactStore, resources: Resources, storage_path: str,
            progress: Progress = print) -> ExecutionReport:
    """Run every stage of ``plan`` whose artifact is missing, in dependency order."""
    from w2s_ray.data import build_data_artifact, resolve_dataset
    from w2s_ray.config import SplitConfig

    if "://" not in storage_path:  # Tune and Train need an absolute path (or a URI)
        storage_path = str(Path(storage_path).expanduser().resolve())
    report = ExecutionReport()
    layers = plan.layers()
    total = len(plan.stages)
    done = 0
    for layer in layers:
        _stop_if_interrupted()
        todo = [s for s in layer if not store.exists(s.key)]
        for s in layer:
            if s not in todo:
                done += 1
                report.cached.append(s.key)
                progress(f"[{done}/{total}] {s.name}: loaded from artifact {s.key}")
        if todo and any(s.kind != "data" for s in todo):
            ensure_ray(resources, dashboard=any(s.kind == "search" for s in plan.stages.values()))
        for s in [s for s in todo if s.kind == "data"]:
            t0 = time.perf_counter()
            staging = store.staging_dir()
            meta = build_data_artifact(resolve_dataset_by_params(s, resolve_dataset),
                                       SplitConfig(**s.params["split"]), staging)
            store.commit(s.key, staging, {"stage": s.name, "params": s.params, **meta})
            done += 1
            report.ran[s.key] = time.perf_counter() - t0
            progress(f"[{done}/{total}] {s.name}: {meta['rows']} rows ({report.ran[s.key]:.1f}s)")
        train = [s for s in todo if s.kind == "train"]
        if train:
            t0 = time.perf_counter()
            progress(f"[{done + 1}-{done + len(train)}/{total}] training {len(train)} model(s) on Ray Train: "
                     + "; ".join(s.name for s in train))
            threads = layer_threads(sum(s.kind == "train" for s in layer), resources)
            _run_train_layer(train, threads, store, resources, storage_path, progress)
            for s in train:
                done += 1
                report.ran[s.key] = store.manifest(s.key, verify=False).meta["seconds"]
            report.phases.append(("train " + ", ".join(s.name for s in train), time.perf_counter() - t0))
            progress(f"    layer done in {report.phases[-1][1]:.1f}s")
        for s in [s for s in todo if s.kind == "search"]:
            from w2s_ray.search import run_search_stage

            progress(f"[{done + 1}/{total}] {s.name}: {s.params['search']['num_samples']} trial(s), "
                     f"up to {s.params['search']['max_concurrent']} at a time")
            meta = run_search_stage(s, store, resources, storage_path, progress)
            done += 1
            report.ran[s.key] = meta["seconds"]
            b = meta["best"]
            progress(f"    selected a={b['alpha_max']:g} w={b['warmup_frac']:g} (validation objective "
                     f"{meta['objective']}: {b['objective']:.4f}); {meta['finished']}/{meta['trials']} trials "
                     f"finished ({meta['seconds']:.1f}s)")
        jobs = [s for s in todo if s.kind in ("features", "infer")]
        t0 = time.perf_counter()
        for s, meta in _run_data_jobs(jobs, store, resources):
            _stop_if_interrupted()
            done += 1
            report.ran[s.key] = meta["seconds"]
            report.phases.append((s.name, time.perf_counter() - t0))
            t0 = time.perf_counter()
            rows = sum(meta["rows"].values()) if isinstance(meta["rows"], dict) else meta["rows"]
            progress(f"[{done}/{total}] {s.name}: {rows} rows{' cached' if s.kind == 'features' else ''} "
                     f"({meta['seconds']:.1f}s)")
        probes = [s for s in todo if s.kind in ("probe", "probeinfer")]
        if probes:
            from w2s_ray.probe import run_probe_layer

            t0 = time.perf_counter()
            for s, meta in zip(probes, run_probe_layer(probes, store.uri)):
                done += 1
                report.ran[s.key] = meta["seconds"]
                progress(f"[{done}/{total}] {s.name}: {meta['rows']} rows ({meta['seconds']:.1f}s)")
            progress(f"    {len(probes)} probe stage(s) in {time.perf_counter() - t0:.1f}s")
    return report


def _run_data_jobs(stages: list[Stage], store: ArtifactStore, resources: Resources):  # noqa: ANN202
    """A layer's Ray Data jobs (weak labels, predictions, features), one after another with every core.

    Measured on 2 cores: two feature jobs side by side (one thread each) took
    63 s where the same jobs one after another took 45 s. Yields ``(stage, meta)``.
    """
    from w2s_ray.label import run_infer_stage
    from w2s_ray.probe import run_features_stage

    threads = resources.torch_threads or (os.cpu_count() or 1)
    for stage in stages:
        if stage.kind == "features":
            yield stage, run_features_stage(stage, store, threads=threads, use_gpu=resources.use_gpu)
        else:
            yield stage, run_infer_stage(stage, store, actors=1, threads=threads, use_gpu=resources.use_gpu)


def resolve_dataset_by_params(stage: Stage, resolve: Callable[[str], Any]) -> Any:
    """The dataset spec a data stage was planned from (by name, or by file path)."""
    source = stage.params["source"]
    return resolve(source.partition(":")[2] if source.startswith("file:") else stage.params["dataset"])


def storage_dir(out: Path) -> str:
    return str((out / "ray").resolve())
