"""Progress lines and the time-left estimate of one execution: what a researcher watches, nothing else."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from w2s_ray.engine.dataflow import Dataflow, State
from w2s_ray.stages import Meta, Stage

STATUS_EVERY_S = 30.0


@dataclass
class ExecutionReport:
    """What ran, what was loaded, what failed and what it blocked, with measured times."""

    ran: dict[str, float] = field(default_factory=dict)  # key -> seconds
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key -> root cause
    blocked: dict[str, str] = field(default_factory=dict)  # key -> the failed stage that blocks it
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (stage, start s, end s) from the start
    driver_seconds: float = 0.0  # the scheduler's own time in the driver (its loop, not the waits)


def minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


class ProgressLog:
    """Lines for people: each stage's outcome, and a status line with the time left every 30 s."""

    def __init__(self, flow: Dataflow, report: ExecutionReport, progress: Callable[[str], None]) -> None:
        self.flow, self.report, self.progress = flow, report, progress
        self.t0 = time.perf_counter()
        self.started: dict[str, float] = {}
        self.last_status = 0.0
        self.cost_done = 0.0
        self.per_kind: dict[str, list[float]] = {}  # kind -> [seconds, cost units] of finished stages

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, line: str) -> None:
        c = self.flow.counts()
        self.progress(f"[{c[State.DONE] + c[State.CACHED]}/{len(self.flow.stages)}] {line}")

    def finished(self, stage: Stage, meta: Meta) -> float:
        """Record and print a committed stage; → its seconds (the runner's own, else the wall time)."""
        seconds = float(meta.get("seconds", self.now() - self.started[stage.key]))
        self.report.ran[stage.key] = seconds
        self.report.phases.append((stage.name, self.started[stage.key], self.now()))
        cost = self.flow.cost.get(stage.key, 0.0)
        self.cost_done += cost
        acc = self.per_kind.setdefault(stage.kind, [0.0, 0.0])
        acc[0], acc[1] = acc[0] + seconds, acc[1] + cost
        self.say(f"{stage.name}: {self._describe(stage, meta)} ({seconds:.1f}s)")
        return seconds

    @staticmethod
    def _describe(stage: Stage, meta: Meta) -> str:
        """The kind's account of a finished stage; it never stops the run (the artifact is committed)."""
        try:
            return stage.type.describe(stage, meta)
        except Exception as e:  # noqa: BLE001 (a progress line's bug must not turn a committed stage into a crash)
            return f"done (its description failed: {type(e).__name__}: {e})"

    def failed(self, stage: Stage, cause: str, blocked: list[str], log: str | None) -> None:
        where = f" (trial log: {log})" if log else ""
        self.say(f"FAILED {stage.name}: {cause}{where}" + (f"; blocks {len(blocked)} stage(s) that need it"
                                                             if blocked else ""))

    def tick(self) -> None:
        if self.now() - self.last_status >= STATUS_EVERY_S:
            self.status()

    def status(self) -> None:
        """One line of counts per state, elapsed time, and what is left by the cost model's estimate."""
        self.last_status = self.now()
        c = self.flow.counts()
        self.progress(f"  {minutes(self.now())} elapsed: {c[State.DONE] + c[State.CACHED]} done, "
                      f"{c[State.RUNNING]} running, {c[State.WAITING]} waiting, {c[State.FAILED]} failed, "
                      f"{c[State.BLOCKED]} blocked; {self.time_left()}")

    def time_left(self) -> str:
        """Elapsed time scaled by the cost still to do over the cost done, once 5% of the work is done.

        A running stage counts as done in proportion to its time so far over what
        finished stages of its kind took per unit of cost (at most 90%), so the
        estimate does not grow while long trainings run.
        """
        cost, state = self.flow.cost, self.flow.state
        rate = {kind: s / units for kind, (s, units) in self.per_kind.items() if units > 0}
        done = self.cost_done
        for k, t in self.started.items():
            r = rate.get(self.flow.stages[k].kind)
            if state[k] == State.RUNNING and r and cost.get(k):
                done += cost[k] * min(0.9, (self.now() - t) / (r * cost[k]))
        total = sum(cost.get(k, 0.0) for k, st in state.items() if st not in (State.CACHED, State.FAILED,
                                                                               State.BLOCKED))
        if not total or done < 0.05 * total:
            return "time left: estimated once 5% of the work is done"
        return f"~{minutes(self.now() * (total - done) / done)} left (cost model)"
