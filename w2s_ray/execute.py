"""Run a :class:`~w2s_ray.plan.Plan` on Ray, in the order of :meth:`Plan.layers`, skipping what exists.

* ``data`` stages run in the driver (small pyarrow work);
* ``train`` stages run as Ray Tune function trials, each launching a
  ``TorchTrainer`` (the Train V2 pattern): plans of trainings and inference
  only put every training in one experiment, and a trial waits on the run's
  :class:`Board` for the previous layer's trainings and its layer's weak
  labels; other plans run one experiment per layer;
* ``infer`` stages run as Ray Data batch-inference jobs, one at a time, in a
  driver thread, each as soon as its model is committed, so they overlap the
  trainings that launch and train meanwhile;
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
import uuid
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
    # (what, start s, end s) from the start of execute(); data jobs overlap the next layer's trainings
    phases: list[tuple[str, float, float]] = field(default_factory=list)


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
    # Idle workers beyond this many are killed after 1 s (default: the CPU
    # count, which the trials, Train controllers and workers alone exceed):
    # the pooled process that serves inference jobs must survive a training.
    "RAY_num_workers_soft_limit": "64",
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


class Board:
    """A Ray actor, one per execution: trainings' epoch metrics for the driver, committed keys for waiting trials.

    One actor instead of Tune's per-trial result queue (``TuneReportCallback``:
    a process per trial, polled five times a second, beside training on a
    small machine); the driver drains the metrics once a second. Every
    training and data job marks its key when committed, and a stage that
    waits for one waits until it is marked: a commit of this execution, not
    merely a manifest on disk (a damaged artifact being recomputed has one).
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.committed: set[str] = set()

    def put(self, stage_key: str, metrics: dict[str, Any]) -> None:
        self.items.append((stage_key, metrics))

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        items, self.items = self.items, []
        return items

    def mark(self, key: str) -> None:
        self.committed.add(key)

    def committed_among(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k in self.committed]


WAIT_POLL_S = 0.25


def wait_for_inputs(board: Any, keys: list[str], poll_s: float = WAIT_POLL_S) -> None:
    """Block until every key in ``keys`` is marked committed on ``board``."""
    import ray

    while keys and len(ray.get(board.committed_among.remote(keys))) < len(keys):
        time.sleep(poll_s)


def _new_board() -> Any:
    """A :class:`Board` on the driver's node (it lives as long as the driver; killed after the run)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(Board).options(scheduling_strategy=here).remote()


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
    """Tune callback: prints the epochs in ``log`` (at most once a second) and trial failures; reports completions."""

    def __new__(cls, stages: dict[str, Stage], progress: Progress, log: Any, finished: Callable[[Stage], None]):
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

            def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
                self.flush()
                finished(stages[trial.config["stage"]])

        return Callback()


def train_trial(config: dict[str, Any], stages: dict[str, Stage], store_uri: str, resources: Resources,
                storage_path: str, threads: dict[str, int], log: Any, waits: dict[str, list[str]]) -> None:
    """A Tune function trial: wait for its ``waits`` on the board, train as a TorchTrainer, commit, mark the board."""
    import ray
    from ray import tune

    from w2s_ray.train import fit_train_stage

    stage = stages[config["stage"]]
    wait_for_inputs(log, waits.get(stage.key, []))
    store = ArtifactStore(store_uri)
    if store.exists(stage.key):  # committed by an earlier attempt of this trial
        ray.get(log.mark.remote(stage.key))
        tune.report({"committed": 1, "cached": 1})
        return
    meta = fit_train_stage(stage, store, resources, storage_path, threads[stage.key],
                           callbacks=[epoch_reporter(log, stage.key)])
    ray.get(log.mark.remote(stage.key))
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


_HOOKS: dict[str, Callable[..., Any]] = {}


class _Hook:
    """A picklable handle on a driver-side callable: Tune pickles its run config, and threads do not pickle.

    Unpickled anywhere else (a restored experiment), it does nothing.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.token = uuid.uuid4().hex
        _HOOKS[self.token] = fn

    def __call__(self, *args: Any) -> Any:
        fn = _HOOKS.get(self.token)
        return fn(*args) if fn is not None else None

    def close(self) -> None:
        _HOOKS.pop(self.token, None)


def _abort_stopper(abort: _Hook) -> Any:
    """A Tune stopper that ends the experiment once ``abort()`` is true (checked every controller step)."""
    from ray import tune

    class Abort(tune.Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return bool(abort())

    return Abort()


def _run_trainings(stages: list[Stage], threads: dict[str, int], waits: dict[str, list[str]], store: ArtifactStore,
                   resources: Resources, storage_path: str, progress: Progress, board: Any,
                   finished: Callable[[Stage], None], abort: Callable[[], bool]) -> None:
    """Trainings as one Tune experiment, started in ``stages`` order, ``max_concurrent_trials`` at a time.

    A trial first waits on ``board`` for its ``waits`` (inputs still being
    computed, or the trainings of the layer before it); each wait must point
    to stages earlier in the order, so waits always end. ``finished(stage)``
    is called as each trial completes. Returns quietly when ``abort()`` (a
    failed data job, Ctrl-C) ended the experiment: the caller raises why.
    """
    from ray import tune

    concurrent = min(len(stages), resources.max_concurrent_trials)
    by_key = {s.key: s for s in stages}
    stop, done = _Hook(abort), _Hook(finished)
    trainable = tune.with_parameters(train_trial, stages=by_key, store_uri=store.uri, resources=resources,
                                     storage_path=storage_path, threads=threads, log=board, waits=waits)
    digest = hashlib.sha256("".join(sorted(by_key)).encode()).hexdigest()[:12]
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(resources)),
        param_space={"stage": tune.grid_search(list(by_key))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=f"train-layer-{digest}",
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            callbacks=[_TrialProgress(by_key, progress, board, done)],
            stop=_abort_stopper(stop),
            verbose=0,
        ),
    )
    try:
        with quiet_tune_logs():
            grid = tuner.fit()
    finally:
        stop.close()
        done.close()
    if abort():
        return
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


class _Run:
    """One ``execute()``: its report, the progress counter (shared by the driver's threads) and its clock."""

    def __init__(self, plan: Plan, store: ArtifactStore, progress: Progress) -> None:
        self.plan, self.store, self.progress = plan, store, progress
        self.report = ExecutionReport()
        self.done, self.lock, self.t0, self.t0_wall = 0, threading.Lock(), time.perf_counter(), time.time()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def todo(self, stages: list[Stage]) -> list[Stage]:
        """The stages still to run; the others are reported as loaded."""
        todo = [s for s in stages if not self.store.exists(s.key)]
        for s in stages:
            if s not in todo:
                self.report.cached.append(s.key)
                self.count(f"{s.name}: loaded from artifact {s.key}")
        return todo

    def count(self, line: str) -> None:
        with self.lock:
            self.done += 1
            self.progress(f"[{self.done}/{len(self.plan.stages)}] {line}")

    def ran(self, stage: Stage, seconds: float, line: str, started: float, ended: float | None = None) -> None:
        self.report.ran[stage.key] = seconds
        self.report.phases.append((stage.name, started, self.now() if ended is None else ended))
        self.count(line)


PIPELINE_KINDS = frozenset({"data", "train", "infer"})


def execute(plan: Plan, store: ArtifactStore, resources: Resources, storage_path: str,
            progress: Progress = print) -> ExecutionReport:
    """Run every stage of ``plan`` whose artifact is missing, in dependency order.

    Plans of trainings and inference only (single runs, grids, bootstrapping
    chains) run as one Tune experiment over every training, layer after
    layer, beside a thread of Ray Data jobs (:func:`_execute_pipelined`);
    plans with searches or probes run layer by layer (:func:`_execute_layers`).
    """
    if "://" not in storage_path:  # Tune and Train need an absolute path (or a URI)
        storage_path = str(Path(storage_path).expanduser().resolve())
    run = _Run(plan, store, progress)
    if {s.kind for s in plan.stages.values()} <= PIPELINE_KINDS:
        _execute_pipelined(run, resources, storage_path)
    else:
        _execute_layers(run, resources, storage_path)
    return run.report


def _execute_pipelined(run: _Run, resources: Resources, storage_path: str) -> None:
    """Every training in one Tune experiment, started layer by layer; every Ray Data job as soon as it can run.

    A trial waits on the board for the trainings of the layer before its own
    and for every data job its layer reads (weak labels), so a layer's
    trainings start together: side by side are the ones :meth:`Plan.layers`
    pairs, with that layer's thread count, and the weak labels (on the
    critical path) get the cores before the next trainings launch (measured:
    a ceiling launched beside the labels job slowed it from ~12 to 21 s and
    the student it feeds started that much later). Trial processes start, and
    import torch, while earlier work runs; the remaining jobs (predictions) run
    in the driver's job thread while the trainings launch and train.
    """
    layers = run.plan.layers()
    todo = [run.todo(layer) for layer in layers]
    for s in [s for t in todo for s in t if s.kind == "data"]:
        _stop_if_interrupted()
        _data_stage(run, s)
    train_layers = [(layer, [s for s in t if s.kind == "train"]) for layer, t in zip(layers, todo)]
    train_layers = [(layer, train) for layer, train in train_layers if train]
    infer = [s for t in todo for s in t if s.kind == "infer"]
    if not train_layers and not infer:
        return
    ensure_ray(resources)
    jobs = _DataJobs(run, resources)
    try:
        jobs.expect(s.key for _, train in train_layers for s in train)
        for s in infer:
            jobs.submit(s)
        if train_layers:
            _prewarm_inference(run.plan, resources)
            order, threads, waits, before = [], {}, {}, []
            for layer, train in train_layers:
                n = layer_threads(sum(s.kind == "train" for s in layer), resources)
                inputs = sorted({d for s in train for d in s.deps if d in jobs.expected} | set(before))
                for s in train:
                    order.append(s)
                    threads[s.key] = n
                    waits[s.key] = inputs
                before = [s.key for s in train]
            _trainings(run, order, threads, waits, jobs, resources, storage_path,
                       f"in {len(train_layers)} layer(s), up to {resources.max_concurrent_trials} at a time")
        jobs.drain()
    finally:
        jobs.close()


def _execute_layers(run: _Run, resources: Resources, storage_path: str) -> None:
    """Layer by layer; a layer's data jobs run (in the job thread) while the next layer's trainings launch."""
    jobs: _DataJobs | None = None
    warmed = False
    try:
        for layer in run.plan.layers():
            _stop_if_interrupted()
            todo = run.todo(layer)
            if todo and any(s.kind != "data" for s in todo):
                ensure_ray(resources, dashboard=any(s.kind == "search" for s in run.plan.stages.values()))
                jobs = jobs or _DataJobs(run, resources)
            for s in [s for s in todo if s.kind == "data"]:
                _data_stage(run, s)
            if any(s.kind in ("search", "probe", "probeinfer") for s in todo) and jobs:
                jobs.drain()  # these read their inputs at once: no waiting on the board
            train = [s for s in todo if s.kind == "train"]
            if train:
                warmed = warmed or _prewarm_inference(run.plan, resources)
                n = layer_threads(sum(s.kind == "train" for s in layer), resources)
                jobs.expect(s.key for s in train)
                _trainings(run, train, {s.key: n for s in train},
                           {s.key: sorted(set(s.deps) & jobs.expected) for s in train}, jobs, resources,
                           storage_path, "(one layer)")
            for s in [s for s in todo if s.kind == "search"]:
                _search(run, s, resources, storage_path)
            for s in [s for s in todo if s.kind in ("features", "infer")]:
                jobs.submit(s)
            probes = [s for s in todo if s.kind in ("probe", "probeinfer")]
            if probes:
                _probes(run, probes)
        if jobs:
            jobs.drain()
    finally:
        if jobs:
            jobs.close()


def _data_stage(run: _Run, stage: Stage) -> None:
    """Build and commit a data artifact in the driver."""
    from w2s_ray.config import SplitConfig
    from w2s_ray.data import build_data_artifact, resolve_dataset

    started = run.now()
    staging = run.store.staging_dir()
    meta = build_data_artifact(resolve_dataset_by_params(stage, resolve_dataset),
                               SplitConfig(**stage.params["split"]), staging)
    run.store.commit(stage.key, staging, {"stage": stage.name, "params": stage.params, **meta})
    seconds = run.now() - started
    run.ran(stage, seconds, f"{stage.name}: {meta['rows']} rows ({seconds:.1f}s)", started)


def _trainings(run: _Run, order: list[Stage], threads: dict[str, int], waits: dict[str, list[str]],
               jobs: "_DataJobs", resources: Resources, storage_path: str, how: str) -> None:
    """Run ``order`` as one Tune experiment (see :func:`_run_trainings`) and record each training as it completes."""
    started = run.now()
    run.progress(f"training {len(order)} model(s) on Ray Train {how}: " + "; ".join(s.name for s in order))

    def trained(stage: Stage) -> None:
        m = run.store.manifest(stage.key, verify=False)
        if m is None or stage.key in run.report.ran:
            return
        fit_at = m.meta.get("timing", {}).get("fit_at", time.time() - m.meta["seconds"])
        begin = fit_at - run.t0_wall
        run.ran(stage, m.meta["seconds"], f"{stage.name}: trained ({m.meta['seconds']:.1f}s)", begin,
                begin + m.meta["seconds"])

    _run_trainings(order, threads, waits, run.store, resources, storage_path, run.progress, jobs.board, trained,
                   abort=lambda: jobs.error is not None or INTERRUPTED.is_set())
    _stop_if_interrupted()
    jobs.raise_error()
    for s in order:  # a completion the callback did not see
        trained(s)
    run.report.phases.append(("trainings: " + ", ".join(s.name for s in order), started, run.now()))
    run.progress(f"    {len(order)} training(s) done in {run.now() - started:.1f}s")


def _search(run: _Run, stage: Stage, resources: Resources, storage_path: str) -> None:
    from w2s_ray.search import run_search_stage

    run.progress(f"[{run.done + 1}/{len(run.plan.stages)}] {stage.name}: {stage.params['search']['num_samples']} "
                 f"trial(s), up to {stage.params['search']['max_concurrent']} at a time")
    started = run.now()
    meta = run_search_stage(stage, run.store, resources, storage_path, run.progress)
    b = meta["best"]
    run.ran(stage, meta["seconds"], f"{stage.name}: selected a={b['alpha_max']:g} w={b['warmup_frac']:g} "
            f"(validation objective {meta['objective']}: {b['objective']:.4f}); {meta['finished']}/"
            f"{meta['trials']} trials finished ({meta['seconds']:.1f}s)", started)


def _probes(run: _Run, probes: list[Stage]) -> None:
    from w2s_ray.probe import run_probe_layer

    started = run.now()
    for s, meta in zip(probes, run_probe_layer(probes, run.store.uri)):
        run.ran(s, meta["seconds"], f"{s.name}: {meta['rows']} rows ({meta['seconds']:.1f}s)", started)
    run.progress(f"    {len(probes)} probe stage(s) in {run.now() - started:.1f}s")


class _DataJobs:
    """The Ray Data jobs (weak labels, predictions, features): one at a time, in a driver thread.

    One after another with every core, as measured best on 2 cores (two
    feature jobs side by side, one thread each: 63 s; one after the other:
    45 s); in a thread so that they run while trainings launch and train.
    The thread takes the first submitted job whose inputs are ready: not
    :attr:`expected` (computed in this run) or marked on :attr:`board`. Each
    job marks its own key when committed (trials waiting for it start then);
    the first error stops the thread and is raised by :meth:`drain` or
    :meth:`raise_error`.
    """

    def __init__(self, run: _Run, resources: Resources) -> None:
        self.run, self.resources = run, resources
        self.board = _new_board()
        self.expected: set[str] = set()  # keys this run computes: a stage reading one waits for its mark
        self.queue: list[Stage] = []  # submitted, not started
        self.running: Stage | None = None
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._work, name="w2s-data-jobs", daemon=True)  # Ctrl-C never waits
        self.thread.start()

    def expect(self, keys: Any) -> None:
        self.expected.update(keys)

    def submit(self, stage: Stage) -> None:
        self.expected.add(stage.key)
        self.queue.append(stage)

    def _next(self) -> Stage | None:
        import ray

        queued = list(self.queue)
        waits = sorted({d for s in queued for d in s.deps if d in self.expected})
        marked = set(ray.get(self.board.committed_among.remote(waits))) if waits else set()
        return next((s for s in queued if all(d in marked or d not in self.expected for d in s.deps)), None)

    def _work(self) -> None:
        import ray

        try:
            while not (self.closed.is_set() or INTERRUPTED.is_set()):
                stage = self._next() if self.queue else None
                if stage is None:
                    time.sleep(WAIT_POLL_S)
                    continue
                self.running = stage
                self.queue.remove(stage)
                started = self.run.now()
                meta = _run_data_job(stage, self.run.store, self.resources)
                ray.get(self.board.mark.remote(stage.key))
                self.running = None
                rows = sum(meta["rows"].values()) if isinstance(meta["rows"], dict) else meta["rows"]
                self.run.ran(stage, meta["seconds"], f"{stage.name}: {rows} rows"
                             f"{' cached' if stage.kind == 'features' else ''} ({meta['seconds']:.1f}s)", started)
        except BaseException as e:  # noqa: BLE001 (raised again in the main thread)
            self.error = e

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until every submitted job is committed (Ctrl-C and job errors surface here)."""
        while (self.queue or self.running is not None) and self.error is None:
            _stop_if_interrupted()
            time.sleep(0.1)
        self.raise_error()

    def close(self) -> None:
        import ray

        self.closed.set()
        with contextlib.suppress(Exception):
            ray.kill(self.board)


def _prewarm_inference(plan: Plan, resources: Resources) -> bool:
    """Before the first training of a local CPU run with inference to come, warm the inference worker.

    Only locally: on a cluster the job's tasks may land on any node, and
    fixed seconds matter little against GPU training.
    """
    from w2s_ray.label import prewarm_worker

    if resources.address or resources.use_gpu or not any(s.kind == "infer" for s in plan.stages.values()):
        return False
    prewarm_worker()
    return True


def _run_data_job(stage: Stage, store: ArtifactStore, resources: Resources) -> dict[str, Any]:
    """One Ray Data job (weak labels, predictions, features) with every core; returns its manifest meta."""
    from w2s_ray.label import run_infer_stage
    from w2s_ray.probe import run_features_stage

    threads = resources.torch_threads or (os.cpu_count() or 1)
    if stage.kind == "features":
        return run_features_stage(stage, store, threads=threads, use_gpu=resources.use_gpu)
    return run_infer_stage(stage, store, actors=1, threads=threads, use_gpu=resources.use_gpu)


def resolve_dataset_by_params(stage: Stage, resolve: Callable[[str], Any]) -> Any:
    """The dataset spec a data stage was planned from (by name, or by file path)."""
    source = stage.params["source"]
    return resolve(source.partition(":")[2] if source.startswith("file:") else stage.params["dataset"])


def storage_dir(out: Path) -> str:
    return str((out / "ray").resolve())
