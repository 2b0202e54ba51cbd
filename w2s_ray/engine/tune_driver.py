"""Trainings as Tune trials of one experiment, handed to Tune only once the scheduler has started them.

The experiment's searcher suggests a training when the scheduler has one
started (inputs committed, room in the pools) and says FINISHED once none
can come; its callback steps the scheduler from Tune's controller loop and
records each training's outcome. So while trainings run, Tune's loop is the
scheduler's loop. A training's retries are Ray Train's (its
``FailureConfig`` resumes the workers from the last checkpoint); the trial
itself is not retried on top, so ``max_failures`` is counted once.

Tune builds the searcher and the callback from its own base classes, which
are imported only here (no Ray import for a plan that needs no Ray).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from w2s_ray.engine.dataflow import State
from w2s_ray.runtime import root_cause
from w2s_ray.stages import Meta, Stage, StageContext

Scheduler = Any  # w2s_ray.engine.scheduler.Scheduler, which imports this module


def training_trial(config: dict[str, Any], stages: dict[str, Stage], contexts: dict[str, StageContext],
                   runs: dict[str, Any]) -> None:
    """A Tune function trial: run one training (committing its model), then report that it committed."""
    from ray import tune

    stage, ctx = stages[config["stage"]], contexts[config["stage"]]
    if ctx.store.exists(stage.key):  # committed by an earlier attempt of this trial
        tune.report({"committed": 1, "seconds": 0.0})
        return
    meta: Meta = runs[stage.kind](stage, ctx)
    tune.report({"committed": 1, "seconds": float(meta.get("seconds", 0.0))})


class TrainingEvents:
    """What Tune tells the scheduler: a training committed, ended without committing, or failed."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.sched = scheduler

    def committed(self, trial: Any, result: dict[str, Any]) -> None:
        """Recorded now, not when the trial's process exits: dependents start sooner, and the next
        training is staged in time for Tune to hand it this trial's process (``reuse_actors``)."""
        key = trial.config["stage"]
        if self.sched.flow.state[key] == State.RUNNING:
            self.sched.finished(key, {"seconds": result.get("seconds", self.sched.log.now()
                                                             - self.sched.log.started[key])})
            self.sched.step(force=True)

    def ended(self, trial: Any) -> None:
        key = trial.config["stage"]
        if self.sched.flow.state[key] == State.RUNNING:  # ended without reporting a commit
            self.sched.failed(key, "the trial ended without committing its model", trial.path)

    def errored(self, trial: Any) -> None:
        key = trial.config["stage"]
        if self.sched.flow.state[key] != State.RUNNING:
            return  # committed before its process failed: the artifact is what counts
        path = Path(trial.error_file) if trial.error_file else None
        text = path.read_text() if path is not None and path.exists() else ""
        self.sched.failed(key, root_cause(text or "the trial failed (no error file)"), trial.path)


def _searcher(sched: Scheduler) -> Any:
    from ray.tune.search import Searcher

    class ReadyTrainings(Searcher):
        """Suggests a training once the scheduler started it; nothing to optimise."""

        def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
            return True

        def suggest(self, trial_id: str) -> Any:
            return sched.next_training() if sched is not None else Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
            pass  # the callback records outcomes (it sees the trial's error file)

        def __reduce__(self):  # Tune pickles its searcher for a restore: a copy drives nothing
            return (_searcher, (None,))

    return ReadyTrainings()


def _callback(sched: Scheduler | None) -> Any:
    from ray import tune

    events = TrainingEvents(sched) if sched is not None else None

    class Events(tune.Callback):
        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            if events:
                events.sched.step()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if events and result.get("committed"):
                events.committed(trial, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if events:
                events.ended(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if events:
                events.errored(trial)

        def __reduce__(self):
            return (_callback, (None,))

    return Events()


def run_trainings(sched: Scheduler) -> None:
    """The experiment of every training still to run: Tune's loop drives the scheduler until none is left."""
    from ray import tune

    from w2s_ray.runtime import quiet_tune_logs, trial_driver_request

    plan, flow = sched.plan, sched.flow
    trainings = [k for k, s in plan.stages.items()
                 if s.type.where == "trial" and flow.state[k] in (State.WAITING, State.RUNNING)]
    runs = {plan.stages[k].kind: plan.stages[k].type.run for k in trainings}
    trainable = tune.with_parameters(training_trial, stages={k: plan.stages[k] for k in trainings},
                                     contexts={k: sched.contexts[k] for k in trainings}, runs=runs)
    digest = hashlib.sha256("".join(sorted(trainings)).encode()).hexdigest()[:12]
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_driver_request(sched.resources)),
        # The pools decide what runs; Tune's limit only sizes its pending queue (1 for a custom
        # searcher otherwise: trials would start one by one). Twice the slots: a committed trial's
        # process is still closing when the next one is staged, which lets Tune reuse that process.
        tune_config=tune.TuneConfig(search_alg=_searcher(sched), num_samples=len(trainings),
                                    max_concurrent_trials=2 * sched.resources.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"trainings-{digest}", storage_path=sched.storage_path, verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),  # Train's FailureConfig retries (see above)
            callbacks=[_callback(sched)],
        ),
    )
    with quiet_tune_logs():
        tuner.fit()
