"""One failure-aware execution of a plan: the loop that starts stages and collects their outcomes.

The policy is :mod:`w2s_ray.engine.dataflow`'s (inputs committed, room in
the pools, longest remaining path first). Stages whose artifact is committed
and verifies are loaded, never run again; a plan whose stages all exist does
not even start Ray. A stage that fails (after its retries) is recorded with
its root cause, printed once; every stage that depends on it is *blocked*
and never started; everything else still runs.

Where a stage runs is its kind's ``where``: a driver thread or a Ray task
is a future that the loop waits on (woken by the first to finish); a
training is a Tune trial (:mod:`w2s_ray.engine.tune_driver`), and while
trainings run Tune's controller loop calls :meth:`Scheduler.step`. All
state is touched by the driver's main thread only.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.engine.dataflow import Dataflow, State, pools_for, stage_costs, stage_requests, stage_threads
from w2s_ray.engine.progress import STATUS_EVERY_S, ExecutionReport, ProgressLog
from w2s_ray.plan import Plan
from w2s_ray.runtime import root_cause
from w2s_ray.stages import Meta, Stage, StageContext

Progress = Callable[[str], None]

# Set by the CLI's SIGINT handler: a running Ray Data job in a driver thread
# cannot be interrupted, so the loop checks this flag at every step.
INTERRUPTED = threading.Event()
TUNE_STEP_S = 0.05  # Tune's controller loop calls step() far more often than stages finish


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
    """One execution of a plan: the dataflow, the pools, the running futures and trials."""

    def __init__(self, plan: Plan, store: ArtifactStore, resources: Resources, storage_path: str,
                 progress: Progress) -> None:
        self.plan, self.store, self.resources, self.storage_path = plan, store, resources, storage_path
        self.report = ExecutionReport()
        committed = {k for k in plan.stages if store.exists(k)}
        self.report.cached = [k for k in plan.stages if k in committed]
        threads = stage_threads(plan, resources)
        self.contexts = {k: StageContext(store.uri, resources, storage_path, threads[k]) for k in plan.stages}
        self.pools = pools_for(resources)
        self.requests = stage_requests(plan, threads, resources, self.pools)
        self.flow = Dataflow(plan, committed, stage_costs(plan), self.requests)
        self.log = ProgressLog(self.flow, self.report, progress)
        self.trial_kinds = {s.kind for s in plan.stages.values() if s.type.where == "trial"}
        self.futures: dict[Future, str] = {}
        self.refs: list[Any] = []  # Ray task refs, cancelled if the run stops
        self.trial_queue: deque[str] = deque()  # started trainings not yet handed to Tune
        self.last_step = 0.0
        self.on_commit: Callable[[Stage, Meta], None] | None = None  # see execute()

    # -- the loop --------------------------------------------------------------------------------
    def step(self, force: bool = False) -> None:
        """Collect finished futures, start what is ready and fits, print the status now and then."""
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        t = time.perf_counter()
        if not force and t - self.last_step < TUNE_STEP_S:
            return
        self.last_step = t
        for future in [f for f in self.futures if f.done()]:
            key = self.futures.pop(future)
            error = future.exception()
            if error is None:
                self.finished(key, future.result())
            else:
                self.failed(key, root_cause(error))
        self._launch()
        self.log.tick()
        self.report.driver_seconds += time.perf_counter() - t

    def _launch(self) -> None:
        while (key := self.flow.pick(self.pools.fits)) is not None:
            stage, ctx = self.plan.stages[key], self.contexts[key]
            self.pools.take(self.requests[key])
            self.flow.start(key)
            self.log.started[key] = self.log.now()
            where = stage.type.where
            if where == "trial":
                self.trial_queue.append(key)
            elif where == "thread":
                self.futures[in_thread(stage.type.run, stage, ctx)] = key
            else:
                ref = _remote_task(stage.type.task_cpus).options(name=f"w2s-{stage.kind}").remote(
                    stage.type.run, stage, ctx)
                self.refs.append(ref)
                self.futures[ref.future()] = key

    def wait(self) -> None:
        """Step until every stage is done, failed or blocked, or trainings are ready for Tune to run.

        Sleeps until the first running stage finishes (or the next status
        line is due), never polls.
        """
        self.step(force=True)
        while not self.flow.finished and not self.trial_queue:
            if not self.futures:
                raise RuntimeError("the scheduler has nothing running and nothing it can start")  # a policy bug
            cf.wait(list(self.futures), timeout=STATUS_EVERY_S, return_when=cf.FIRST_COMPLETED)
            self.step(force=True)

    # -- stage outcomes ----------------------------------------------------------------------------
    def finished(self, key: str, meta: Meta) -> None:
        stage = self.plan.stages[key]
        self.flow.done(key)
        self.pools.give(self.requests[key])
        self.log.finished(stage, meta)
        if self.on_commit is not None:
            self.on_commit(stage, meta)

    def failed(self, key: str, cause: str, log: str | None = None) -> None:
        blocked = self.flow.fail(key, cause)
        self.pools.give(self.requests[key])
        self.report.failed[key] = cause
        self.report.blocked.update(dict.fromkeys(blocked, key))
        self.log.failed(self.plan.stages[key], cause, blocked, log)

    # -- trainings through Tune --------------------------------------------------------------------
    def next_training(self) -> str | dict[str, str] | None:
        """For the searcher: a started training's config, FINISHED once none can come, else None (ask later)."""
        from ray.tune.search import Searcher

        self.step()
        if self.trial_queue:
            return {"stage": self.trial_queue.popleft()}
        return None if self.flow.waiting(self.trial_kinds) else Searcher.FINISHED

    def close(self) -> None:
        """Cancel the Ray tasks still running (a stopped run); threads are daemons."""
        if self.refs:
            import ray

            for ref in self.refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, recursive=True)


def execute(plan: Plan, store: ArtifactStore, resources: Resources, storage_path: str,
            progress: Progress = print, on_commit: Callable[[Stage, Meta], None] | None = None) -> ExecutionReport:
    """Run every stage of ``plan`` whose artifact is missing; → what ran, loaded, failed and was blocked.

    Never raises for a stage's failure (the report holds it); Ctrl-C raises
    KeyboardInterrupt. ``on_commit`` sees each stage this run committed, with
    its manifest's meta (experiment tracking); it must not raise.
    """
    from w2s_ray.engine.tune_driver import run_trainings
    from w2s_ray.runtime import ensure_ray

    if "://" not in storage_path:  # Tune and Train need an absolute path (or a URI)
        storage_path = str(Path(storage_path).expanduser().resolve())
    sched = Scheduler(plan, store, resources, storage_path, progress)
    sched.on_commit = on_commit
    for key in sched.report.cached:
        sched.log.say(f"{plan.stages[key].name}: loaded from artifact {key}")
    todo = [s for k, s in plan.stages.items() if sched.flow.state[k] == State.WAITING]
    if not todo:
        return sched.report
    kinds = {s.kind: s.type for s in todo}.values()
    if any(k.uses_ray for k in kinds):
        ensure_ray(resources, dashboard=any(k.dashboard for k in kinds))
        for k in kinds:
            if k.prepare is not None:
                k.prepare(resources)
    sched.log.status()
    try:
        sched.wait()
        while sched.trial_queue:  # once in practice: the experiment ends when no training is left
            run_trainings(sched)
            sched.wait()
    finally:
        sched.close()
    sched.log.status()
    return sched.report
