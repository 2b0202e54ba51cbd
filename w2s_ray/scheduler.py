"""One failure-aware dataflow scheduler for every plan.

A stage starts as soon as its inputs are committed and the resources profile
has room; among the stages that could start, the one with the longest
estimated path to the end of the plan goes first (list scheduling on the
critical path). Stages whose artifact is committed and verifies are loaded,
never run again; a plan whose stages all exist does not even start Ray.

A stage that fails (after Tune's retries, for a training) is recorded with
its root cause, printed once; every stage that depends on it is *blocked*
and never started; everything else still runs. Nothing waits on a failed
stage: a blocked stage leaves the plan at once.

How it drives Ray: trainings are Tune trials of one experiment whose
searcher (:class:`_ReadyTrainings`) hands Tune a training only once the
scheduler has started it, so Tune's controller loop is the scheduler's loop
while trainings run (its callback and searcher call :meth:`Scheduler.step`);
every other stage is a future (a driver thread or a Ray task, per
:data:`w2s_ray.runners.RUNNERS`) that the same loop polls. All state is
touched by the driver's main thread only.

:class:`Dataflow` (states and dependencies) and :class:`Pools` (room) are pure
bookkeeping, unit-tested without Ray.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.plan import TRAINING_KINDS, Plan, Stage
from w2s_ray.runners import RUNNERS, SMALL_KINDS, Runner, StageContext, stage_threads
from w2s_ray.runtime import root_cause

Progress = Callable[[str], None]

# Set by the CLI's SIGINT handler: a running Ray Data job in a driver thread
# cannot be interrupted, so the loop checks this flag at every step.
INTERRUPTED = threading.Event()


class State(str, Enum):
    WAITING = "waiting"  # inputs not all committed yet
    RUNNING = "running"
    DONE = "done"  # committed by this run
    CACHED = "cached"  # committed before this run
    FAILED = "failed"
    BLOCKED = "blocked"  # an input failed (or is itself blocked): never started


COMMITTED = (State.DONE, State.CACHED)


class Dataflow:
    """The plan's stages, their states, and which can start: pure bookkeeping (no Ray, no clock)."""

    def __init__(self, plan: Plan, committed: set[str], cost: dict[str, float]) -> None:
        self.stages = plan.stages
        self.cost = cost
        self.consumers: dict[str, list[str]] = {k: [] for k in self.stages}
        for key, stage in self.stages.items():
            for dep in stage.deps:
                self.consumers[dep].append(key)
        self.state = {k: State.CACHED if k in committed else State.WAITING for k in self.stages}
        self.missing = {k: sum(self.state[d] not in COMMITTED for d in s.deps) for k, s in self.stages.items()}
        self.reason: dict[str, str] = {}  # failed: its cause; blocked: the failed stage's key
        self.priority = self._critical_paths()
        self.order = {k: i for i, k in enumerate(self.stages)}
        self.ready_keys = {k for k, n in self.missing.items() if n == 0 and self.state[k] == State.WAITING}

    def _critical_paths(self) -> dict[str, float]:
        """Each stage's cost plus the costliest path of stages after it (plan order is topological)."""
        out: dict[str, float] = {}
        for key in reversed(self.stages):
            out[key] = self.cost.get(key, 0.0) + max((out[c] for c in self.consumers[key]), default=0.0)
        return out

    def ready(self) -> list[Stage]:
        """Waiting stages whose inputs are all committed: longest remaining path first, then plan order."""
        keys = sorted(self.ready_keys, key=lambda k: (-self.priority[k], self.order[k]))
        return [self.stages[k] for k in keys]

    def start(self, key: str) -> None:
        assert key in self.ready_keys, f"{key} is not ready"
        self.ready_keys.discard(key)
        self.state[key] = State.RUNNING

    def done(self, key: str) -> None:
        self.state[key] = State.DONE
        for c in self.consumers[key]:
            self.missing[c] -= 1
            if self.missing[c] == 0 and self.state[c] == State.WAITING:
                self.ready_keys.add(c)

    def fail(self, key: str, cause: str) -> list[str]:
        """Record ``key`` as failed; → the stages it blocks (every waiting stage downstream of it)."""
        self.state[key] = State.FAILED
        self.reason[key] = cause
        self.ready_keys.discard(key)
        blocked, todo = [], list(self.consumers[key])
        while todo:
            c = todo.pop()
            if self.state[c] == State.WAITING:
                self.state[c] = State.BLOCKED
                self.reason[c] = key
                self.ready_keys.discard(c)
                blocked.append(c)
                todo.extend(self.consumers[c])
        return blocked

    def counts(self) -> dict[State, int]:
        out = dict.fromkeys(State, 0)
        for s in self.state.values():
            out[s] += 1
        return out

    @property
    def finished(self) -> bool:
        return not any(s in (State.WAITING, State.RUNNING) for s in self.state.values())

    def waiting(self, kinds: Collection[str]) -> bool:
        """Whether a stage of one of ``kinds`` may still start (some are waiting)."""
        return any(st == State.WAITING and self.stages[k].kind in kinds for k, st in self.state.items())


@dataclass
class Pools:
    """Room in the resources profile: named capacities; a request names amounts of some of them."""

    capacity: dict[str, float]
    used: dict[str, float] = field(default_factory=dict)

    def clip(self, request: dict[str, float]) -> dict[str, float]:
        """A request no larger than the pools (so every stage fits once the pools are empty)."""
        return {p: min(n, self.capacity[p]) for p, n in request.items() if p in self.capacity}

    def fits(self, request: dict[str, float]) -> bool:
        return all(self.used.get(p, 0.0) + n <= self.capacity[p] + 1e-9 for p, n in request.items())

    def take(self, request: dict[str, float]) -> None:
        for p, n in request.items():
            self.used[p] = self.used.get(p, 0.0) + n

    def give(self, request: dict[str, float]) -> None:
        for p, n in request.items():
            self.used[p] -= n


def local_cpu_run(resources: Resources) -> bool:
    """A run on this machine's CPUs: its cores are a pool the scheduler shares out (threads per stage)."""
    return not resources.address and not resources.use_gpu


def pools_for(resources: Resources, cores: int | None = None) -> Pools:
    """Trainings at a time (a search counts its concurrent trials); Ray Data jobs at a time; cores on a local CPU run.

    Locally one Ray Data job runs at a time with every core (measured best
    on 2 cores: two feature jobs side by side took 63 s, one after the other
    45 s); on a cluster as many as trainings, since Ray places their actors.
    """
    capacity = {"trainings": float(resources.max_concurrent_trials),
                "jobs": 1.0 if not resources.address else float(resources.max_concurrent_trials)}
    if local_cpu_run(resources):
        capacity["cores"] = float(cores or os.cpu_count() or 1)
    return Pools(capacity)


def stage_request(stage: Stage, threads: int, resources: Resources) -> dict[str, float]:
    """What a stage takes from the pools while it runs."""
    if stage.kind in TRAINING_KINDS:
        return {"trainings": 1, "cores": threads}
    if stage.kind == "search":
        k = min(stage.params["search"]["max_concurrent"], resources.max_concurrent_trials)
        return {"trainings": k, "cores": k * threads}
    if stage.kind in ("infer", "features"):
        return {"jobs": 1, "cores": threads}
    if stage.kind in SMALL_KINDS:
        return {"cores": threads}
    return {}


@dataclass
class ExecutionReport:
    """What ran, what was loaded, what failed and what it blocked, with measured times."""

    ran: dict[str, float] = field(default_factory=dict)  # key -> seconds
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key -> root cause
    blocked: dict[str, str] = field(default_factory=dict)  # key -> the failed stage that blocks it
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (stage, start s, end s) from the start
    driver_seconds: float = 0.0  # the scheduler's own time in the driver (its loop, not the waits)


def split_rows(plan: Plan, stage: Stage) -> dict[str, int]:
    """Rows per split of the data a stage reads (for its cost estimate)."""
    data = plan.stages.get(stage.inputs.get("data") or stage.inputs.get("rows")
                           or (stage.key if stage.kind in ("data", "rows") else ""))
    if data is None:
        return {}
    from w2s_ray.presets import SPLIT_ROWS

    split = data.params["split" if data.kind == "data" else "sizes"]
    return {name: int(split.get(field_name, 0) or 0) for name, field_name in SPLIT_ROWS.items()}


def stage_costs(plan: Plan) -> dict[str, float]:
    from w2s_ray.presets import stage_cost

    out = {}
    for key, s in plan.stages.items():
        trained = plan.stages.get(s.inputs.get("model", ""))  # the model an inference stage runs
        out[key] = stage_cost(s, split_rows(plan, s), trained.params.get("model") if trained else None)
    return out


STATUS_EVERY_S = 30.0
POLL_S = 0.05


def in_thread(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` in a daemon thread, as a future (Ctrl-C never waits for it, unlike a thread pool's)."""
    future: Future = Future()

    def work() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 (handed to the scheduler through the future)
            future.set_exception(e)

    threading.Thread(target=work, daemon=True, name="w2s-stage").start()
    return future


def _task(run: Callable[[Stage, StageContext], Any], stage: Stage, ctx: StageContext) -> Any:
    return run(stage, ctx)


@functools.cache
def _remote_task(cpus: float) -> Any:
    """:func:`_task` as a Ray remote function reserving ``cpus``: made once per size, not per stage."""
    import ray

    return ray.remote(num_cpus=cpus)(_task)


class Scheduler:
    """One execution of a plan: the dataflow, the pools, the running futures and trials, progress."""

    def __init__(self, plan: Plan, store: ArtifactStore, resources: Resources, storage_path: str,
                 progress: Progress, runners: dict[str, Runner]) -> None:
        self.plan, self.store, self.resources, self.storage_path = plan, store, resources, storage_path
        self.progress, self.runners = progress, runners
        self.trial_kinds = frozenset(k for k, r in runners.items() if r.where == "trial")  # run in Tune trials
        self.report = ExecutionReport()
        committed = {k for k in plan.stages if store.exists(k)}
        self.flow = Dataflow(plan, committed, stage_costs(plan))
        self.report.cached = [k for k in plan.stages if k in committed]
        threads = stage_threads(plan, resources)
        self.contexts = {k: StageContext(store.uri, resources, storage_path, threads[k]) for k in plan.stages}
        self.pools = pools_for(resources)
        self.requests = {k: self.pools.clip(stage_request(s, threads[k], resources)) for k, s in plan.stages.items()}
        self.futures: dict[str, Future] = {}
        self.refs: list[Any] = []  # Ray task refs, cancelled if the run stops
        self.trial_queue: deque[str] = deque()  # started trainings not yet handed to Tune
        self.started: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.last_poll = self.last_status = 0.0
        self.cost_done = 0.0
        self.on_commit: Callable[[Stage, dict[str, Any]], None] | None = None  # see execute()

    # -- the loop --------------------------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def step(self) -> None:
        """Collect finished futures, start what is ready and fits, print the status now and then."""
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        t = time.perf_counter()
        if t - self.last_poll < POLL_S:
            return
        self.last_poll = t
        for key, future in list(self.futures.items()):
            if future.done():
                del self.futures[key]
                error = future.exception()
                if error is None:
                    self.finished(key, future.result())
                else:
                    self.failed(key, root_cause(error))
        self._launch()
        if self.now() - self.last_status >= STATUS_EVERY_S:
            self.status()
        self.report.driver_seconds += time.perf_counter() - t

    def _launch(self) -> None:
        for stage in self.flow.ready():
            request = self.requests[stage.key]
            if not self.pools.fits(request):
                continue  # a later, smaller stage may still fit (the pools are rarely all of one kind)
            self.pools.take(request)
            self.flow.start(stage.key)
            self.started[stage.key] = self.now()
            runner, ctx = self.runners[stage.kind], self.contexts[stage.key]
            if runner.where == "trial":
                self.trial_queue.append(stage.key)
            elif runner.where == "thread":
                self.futures[stage.key] = in_thread(runner.run, stage, ctx)
            else:
                ref = _remote_task(runner.task_cpus).options(name=f"w2s-{stage.kind}").remote(runner.run, stage, ctx)
                self.refs.append(ref)
                self.futures[stage.key] = ref.future()

    def wait(self) -> None:
        """Step until every stage is done, failed or blocked (used when no Tune experiment drives the loop)."""
        while not self.flow.finished:
            self.step()
            if self.trial_queue:
                return  # trainings to run: the caller starts Tune, whose loop steps from here on
            time.sleep(POLL_S)

    # -- stage outcomes ----------------------------------------------------------------------------
    def finished(self, key: str, meta: dict[str, Any]) -> None:
        stage = self.plan.stages[key]
        self.flow.done(key)
        self.pools.give(self.requests[key])
        seconds = float(meta.get("seconds", self.now() - self.started[key]))
        self.report.ran[key] = seconds
        self.report.phases.append((stage.name, self.started[key], self.now()))
        self.cost_done += self.flow.cost.get(key, 0.0)
        self.say(f"{stage.name}: {self._describe(stage, meta)} ({seconds:.1f}s)")
        if self.on_commit is not None:
            self.on_commit(stage, meta)

    def _describe(self, stage: Stage, meta: dict[str, Any]) -> str:
        """The progress line's account of a finished stage; it never stops the run (the artifact is committed)."""
        try:
            return self.runners[stage.kind].describe(stage, meta)
        except Exception as e:  # noqa: BLE001 (a progress line's bug must not turn a committed stage into a crash)
            return f"done (its description failed: {type(e).__name__}: {e})"

    def failed(self, key: str, cause: str, log: str | None = None) -> None:
        stage = self.plan.stages[key]
        blocked = self.flow.fail(key, cause)
        self.pools.give(self.requests[key])
        self.report.failed[key] = cause
        self.report.blocked.update(dict.fromkeys(blocked, key))
        where = f" (trial log: {log})" if log else ""
        self.say(f"FAILED {stage.name}: {cause}{where}" + (f"; blocks {len(blocked)} stage(s) that need it"
                                                             if blocked else ""))

    def say(self, line: str) -> None:
        c = self.flow.counts()
        self.progress(f"[{c[State.DONE] + c[State.CACHED]}/{len(self.plan.stages)}] {line}")

    def status(self) -> None:
        """One line of counts per state, elapsed time, and what is left by the cost model's estimate."""
        self.last_status = self.now()
        c = self.flow.counts()
        self.progress(f"  {_minutes(self.now())} elapsed: {c[State.DONE] + c[State.CACHED]} done, "
                      f"{c[State.RUNNING]} running, {c[State.WAITING]} waiting, {c[State.FAILED]} failed, "
                      f"{c[State.BLOCKED]} blocked; {self.time_left()}")

    def time_left(self) -> str:
        """Elapsed time scaled by the cost still to do over the cost done, once 5% of the work is done.

        A running stage counts as done in proportion to its time so far over what
        finished stages of its kind took per unit of cost (at most 90%), so the
        estimate does not grow while long trainings run.
        """
        cost, state = self.flow.cost, self.flow.state
        per_cost: dict[str, float] = {}  # seconds per unit of cost, by kind, from finished stages
        for kind in {self.plan.stages[k].kind for k in self.report.ran}:
            keys = [k for k in self.report.ran if self.plan.stages[k].kind == kind]
            units = sum(cost.get(k, 0.0) for k in keys)
            if units > 0:
                per_cost[kind] = sum(self.report.ran[k] for k in keys) / units
        done = self.cost_done
        for k, st in state.items():
            rate = per_cost.get(self.plan.stages[k].kind)
            if st == State.RUNNING and rate and cost.get(k):
                done += cost[k] * min(0.9, (self.now() - self.started[k]) / (rate * cost[k]))
        total = sum(cost.get(k, 0.0) for k, st in state.items() if st not in (State.CACHED, State.FAILED,
                                                                               State.BLOCKED))
        if not total or done < 0.05 * total:
            return "time left: estimated once 5% of the work is done"
        return f"~{_minutes(self.now() * (total - done) / done)} left (cost model)"

    # -- trainings through Tune --------------------------------------------------------------------
    def next_training(self) -> str | dict[str, str] | None:
        """For the searcher: a started training's config, FINISHED once none can come, else None (ask later)."""
        from ray.tune.search import Searcher

        self.step()
        if self.trial_queue:
            return {"stage": self.trial_queue.popleft()}
        return None if self.flow.waiting(self.trial_kinds) else Searcher.FINISHED

    def trial_committed(self, trial: Any, result: dict[str, Any]) -> None:
        """The trial reported its model committed: the training is done, its slot free for the next one.

        Recorded now, not when the trial's process exits: dependents start
        sooner, and the next training is staged in time for Tune to hand it
        this trial's process (``reuse_actors``) instead of starting a new one.
        """
        key = trial.config["stage"]
        if self.flow.state[key] == State.RUNNING:
            self.finished(key, {"seconds": result.get("seconds", self.now() - self.started[key])})
            self.last_poll = 0.0
            self.step()

    def trial_ended(self, trial: Any) -> None:
        key = trial.config["stage"]
        if self.flow.state[key] == State.RUNNING:  # ended without reporting a commit
            self.failed(key, "the trial ended without committing its model", trial.path)

    def trial_failed(self, trial: Any) -> None:
        """Called by Tune once the trial's retries (``max_failures``) are spent."""
        key = trial.config["stage"]
        if self.flow.state[key] != State.RUNNING:
            return  # committed before its process failed: the artifact is what counts
        text = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else ""
        self.failed(key, root_cause(text or "the trial failed (no error file)"), trial.path)

    def run_trainings(self) -> None:
        """The experiment of every training: Tune's loop drives :meth:`step` until no training is left."""
        from ray import tune

        from w2s_ray.runtime import quiet_tune_logs, trial_driver_request

        trainings = [k for k, s in self.plan.stages.items()
                     if s.kind in self.trial_kinds and self.flow.state[k] in (State.WAITING, State.RUNNING)]
        runs = {kind: self.runners[kind].run for kind in self.trial_kinds}
        trainable = tune.with_parameters(training_trial, stages={k: self.plan.stages[k] for k in trainings},
                                         contexts={k: self.contexts[k] for k in trainings}, runs=runs)
        digest = hashlib.sha256("".join(sorted(trainings)).encode()).hexdigest()[:12]
        tuner = tune.Tuner(
            tune.with_resources(trainable, trial_driver_request(self.resources)),
            # The pools decide what runs; Tune's limit only sizes its pending queue (1 for a custom
            # searcher otherwise: trials would start one by one). Twice the slots: a committed trial's
            # process is still closing when the next one is staged, which lets Tune reuse that process.
            tune_config=tune.TuneConfig(search_alg=_ReadyTrainings(self), num_samples=len(trainings),
                                        max_concurrent_trials=2 * self.resources.max_concurrent_trials,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"trainings-{digest}", storage_path=self.storage_path, verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.resources.max_failures),
                callbacks=[_TrainingEvents(self)],
            ),
        )
        with quiet_tune_logs():
            tuner.fit()

    def close(self) -> None:
        """Cancel the Ray tasks still running (a stopped run); threads are daemons."""
        if self.refs:
            import contextlib

            import ray

            for ref in self.refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, recursive=True)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def training_trial(config: dict[str, Any], stages: dict[str, Stage], contexts: dict[str, StageContext],
                   runs: dict[str, Callable[[Stage, StageContext], dict[str, Any]]]) -> None:
    """A Tune function trial: run one training (committing its model), then report that it committed."""
    from ray import tune

    stage, ctx = stages[config["stage"]], contexts[config["stage"]]
    if ctx.store.exists(stage.key):  # committed by an earlier attempt of this trial
        tune.report({"committed": 1, "seconds": 0.0})
        return
    meta = runs[stage.kind](stage, ctx)
    tune.report({"committed": 1, "seconds": float(meta.get("seconds", 0.0))})


class _ReadyTrainings:
    """A Tune searcher that suggests a training once the scheduler started it (inputs committed, room)."""

    def __new__(cls, scheduler: Scheduler | None):
        from ray.tune.search import Searcher

        class ReadyTrainings(Searcher):
            def __init__(self, scheduler: Scheduler | None) -> None:
                super().__init__()
                self.scheduler = scheduler

            def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
                return True  # nothing to optimise: the scheduler decides what runs

            def suggest(self, trial_id: str) -> Any:
                return self.scheduler.next_training() if self.scheduler else Searcher.FINISHED

            def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
                pass  # the callback records outcomes (it sees the trial's error file)

            def __reduce__(self):  # Tune pickles its config for a restore: a copy drives nothing
                return (_ReadyTrainings, (None,))

        return ReadyTrainings(scheduler)


class _TrainingEvents:
    """A Tune callback: steps the scheduler with Tune's loop and records each training's outcome."""

    def __new__(cls, scheduler: Scheduler | None):
        from ray import tune

        class TrainingEvents(tune.Callback):
            def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
                if scheduler:
                    scheduler.step()

            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                if scheduler and result.get("committed"):
                    scheduler.trial_committed(trial, result)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                if scheduler:
                    scheduler.trial_ended(trial)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                if scheduler:
                    scheduler.trial_failed(trial)

            def __reduce__(self):
                return (_TrainingEvents, (None,))

        return TrainingEvents()


def execute(plan: Plan, store: ArtifactStore, resources: Resources, storage_path: str,
            progress: Progress = print, runners: dict[str, Runner] | None = None,
            on_commit: Callable[[Stage, dict[str, Any]], None] | None = None) -> ExecutionReport:
    """Run every stage of ``plan`` whose artifact is missing; → what ran, loaded, failed and was blocked.

    Never raises for a stage's failure (the report holds it); Ctrl-C raises
    KeyboardInterrupt. ``runners`` replaces :data:`~w2s_ray.runners.RUNNERS`
    (the simulated-cluster benchmark sleeps instead of training).
    ``on_commit`` sees each stage this run committed, with its manifest's
    meta (experiment tracking); it must not raise.
    """
    from w2s_ray.runtime import ensure_ray

    if "://" not in storage_path:  # Tune and Train need an absolute path (or a URI)
        storage_path = str(Path(storage_path).expanduser().resolve())
    sched = Scheduler(plan, store, resources, storage_path, progress, runners or RUNNERS)
    sched.on_commit = on_commit
    for key in sched.report.cached:
        sched.say(f"{plan.stages[key].name}: loaded from artifact {key}")
    todo = [s for k, s in plan.stages.items() if sched.flow.state[k] == State.WAITING]
    if not todo:
        return sched.report
    if any(s.kind != "data" for s in todo):
        ensure_ray(resources, dashboard=any(s.kind == "search" for s in todo))
        _prewarm_inference(todo, resources)
    sched.status()
    try:
        sched.wait()
        while sched.trial_queue:  # once in practice: the experiment ends when no training is left
            sched.run_trainings()
            sched.wait()
    finally:
        sched.close()
    sched.status()
    return sched.report


def _prewarm_inference(todo: list[Stage], resources: Resources) -> None:
    """On a local CPU run with inference to come, start the pooled worker its tasks will use (imports done).

    Only locally: on a cluster the job's tasks may land on any node, and
    fixed seconds matter little against GPU training.
    """
    if local_cpu_run(resources) and any(s.kind == "infer" for s in todo):
        from w2s_ray.label import prewarm_worker

        prewarm_worker()
