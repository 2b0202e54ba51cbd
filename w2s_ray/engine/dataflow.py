"""The scheduling policy's bookkeeping: stage states, pools, priorities, threads. Pure: no Ray, no clock.

The real scheduler (:mod:`w2s_ray.engine.scheduler`) and the virtual-clock
simulation (``benchmarks/policy_simulation.py``) drive the same classes:
a stage starts as soon as its inputs are committed and the pools have
room; among the stages that could start, the one with the longest estimated
path to the end of the plan goes first (list scheduling on the critical
path). Every operation costs O(log n) in the plan's size or less: ready
stages wait in one heap per distinct pool request, so picking the next
stage looks at a handful of heads, never at every stage.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import Enum

from w2s_ray.config import Resources
from w2s_ray.plan import Plan
from w2s_ray.stages import Stage

Request = tuple[tuple[str, float], ...]  # (pool, amount) pairs, sorted: hashable, one heap each


class State(str, Enum):
    WAITING = "waiting"  # inputs not all committed yet
    RUNNING = "running"
    DONE = "done"  # committed by this run
    CACHED = "cached"  # committed before this run
    FAILED = "failed"
    BLOCKED = "blocked"  # an input failed (or is itself blocked): never started


COMMITTED = (State.DONE, State.CACHED)


class Dataflow:
    """The plan's stages, their states, and which can start next."""

    def __init__(self, plan: Plan, committed: set[str], cost: dict[str, float],
                 requests: dict[str, dict[str, float]] | None = None) -> None:
        self.stages = plan.stages
        self.cost = cost
        self.consumers = plan.consumers()
        self.state = {k: State.CACHED if k in committed else State.WAITING for k in self.stages}
        self.tally = Counter(self.state.values())
        self.waiting_kinds = Counter(s.kind for k, s in self.stages.items() if self.state[k] == State.WAITING)
        self.missing = {k: sum(self.state[d] not in COMMITTED for d in s.deps) for k, s in self.stages.items()}
        self.reason: dict[str, str] = {}  # failed: its cause; blocked: the failed stage's key
        self.priority = self._critical_paths()
        self.order = {k: i for i, k in enumerate(self.stages)}
        requests = requests or {}
        self.request: dict[str, Request] = {k: tuple(sorted(requests.get(k, {}).items())) for k in self.stages}
        self.heaps: dict[Request, list[tuple[float, int, str]]] = {}
        self.ready_keys: set[str] = set()
        for k, n in self.missing.items():
            if n == 0 and self.state[k] == State.WAITING:
                self._push(k)

    def _critical_paths(self) -> dict[str, float]:
        """Each stage's cost plus the costliest path of stages after it (plan order is topological)."""
        out: dict[str, float] = {}
        for key in reversed(self.stages):
            out[key] = self.cost.get(key, 0.0) + max((out[c] for c in self.consumers[key]), default=0.0)
        return out

    def _push(self, key: str) -> None:
        self.ready_keys.add(key)
        heapq.heappush(self.heaps.setdefault(self.request[key], []), (-self.priority[key], self.order[key], key))

    def _head(self, heap: list[tuple[float, int, str]]) -> tuple[float, int, str] | None:
        while heap and heap[0][2] not in self.ready_keys:  # started or blocked since it was pushed
            heapq.heappop(heap)
        return heap[0] if heap else None

    def ready(self) -> list[Stage]:
        """Waiting stages whose inputs are all committed: longest remaining path first, then plan order."""
        keys = sorted(self.ready_keys, key=lambda k: (-self.priority[k], self.order[k]))
        return [self.stages[k] for k in keys]

    def pick(self, fits: Callable[[dict[str, float]], bool]) -> str | None:
        """The ready stage with the longest remaining path among those whose request ``fits``; None if none.

        Stages with the same request wait in one heap, so if its head does
        not fit, none of them does: only the heads are looked at.
        """
        best = None
        for request, heap in self.heaps.items():
            head = self._head(heap)
            if head is not None and (best is None or head < best) and fits(dict(request)):
                best = head
        return None if best is None else best[2]

    def _move(self, key: str, state: State) -> None:
        old = self.state[key]
        self.tally[old] -= 1
        self.tally[state] += 1
        if old == State.WAITING:
            self.waiting_kinds[self.stages[key].kind] -= 1
        self.state[key] = state

    def start(self, key: str) -> None:
        assert key in self.ready_keys, f"{key} is not ready"
        self.ready_keys.discard(key)
        self._move(key, State.RUNNING)

    def done(self, key: str) -> None:
        self._move(key, State.DONE)
        for c in self.consumers[key]:
            self.missing[c] -= 1
            if self.missing[c] == 0 and self.state[c] == State.WAITING:
                self._push(c)

    def fail(self, key: str, cause: str) -> list[str]:
        """Record ``key`` as failed; → the stages it blocks (every waiting stage downstream of it)."""
        self._move(key, State.FAILED)
        self.reason[key] = cause
        self.ready_keys.discard(key)
        blocked, todo = [], list(self.consumers[key])
        while todo:
            c = todo.pop()
            if self.state[c] == State.WAITING:
                self._move(c, State.BLOCKED)
                self.reason[c] = key
                self.ready_keys.discard(c)
                blocked.append(c)
                todo.extend(self.consumers[c])
        return blocked

    def counts(self) -> dict[State, int]:
        return {s: self.tally[s] for s in State}

    @property
    def finished(self) -> bool:
        return not self.tally[State.WAITING] and not self.tally[State.RUNNING]

    def waiting(self, kinds: Collection[str]) -> bool:
        """Whether a stage of one of ``kinds`` may still start (some are waiting)."""
        return any(self.waiting_kinds[k] > 0 for k in kinds)


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


def pools_for(resources: Resources, cores: int | None = None) -> Pools:
    """Trainings at a time (a search counts its concurrent trials); Ray Data jobs at a time; cores on a local CPU run.

    Locally one Ray Data job runs at a time with every core (two feature
    jobs side by side were slower than one after the other on 2 cores); on a
    cluster as many as trainings, since Ray places their actors.
    """
    capacity = {"trainings": float(resources.max_concurrent_trials),
                "jobs": 1.0 if not resources.address else float(resources.max_concurrent_trials)}
    if resources.local_cpu:
        capacity["cores"] = float(cores or os.cpu_count() or 1)
    return Pools(capacity)


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
    threads = {key: 1 if s.type.threads == "one" else cores for key, s in plan.stages.items()}
    for layer in plan.layers():
        shared = [s for s in layer if s.type.threads == "shared"]
        side_by_side = max(1, min(len(shared), resources.max_concurrent_trials))
        for s in shared:
            threads[s.key] = max(1, cores // side_by_side)
    return threads


def stage_requests(plan: Plan, threads: dict[str, int], resources: Resources, pools: Pools) -> dict[str, dict]:
    """What each stage takes from the pools while it runs (no more than the pools hold)."""
    return {k: pools.clip(s.type.request(s, threads[k], resources)) for k, s in plan.stages.items()}


def split_rows(plan: Plan, stage: Stage) -> dict[str, int]:
    """Rows per split of the data a stage reads (for its cost estimate): from the data stage it reads, or itself."""
    for candidate in (plan.stages.get(stage.inputs.get("data", "")), plan.stages.get(stage.inputs.get("rows", "")),
                      stage):
        if candidate is not None and candidate.type.deals is not None:
            return candidate.type.deals(candidate)
    return {}


def stage_costs(plan: Plan) -> dict[str, float]:
    """Each stage's estimated compute (its kind's cost model; an inference costs the model it runs)."""
    out = {}
    for key, s in plan.stages.items():
        trained = plan.stages.get(s.inputs.get("model", ""))
        out[key] = s.type.cost(s, split_rows(plan, s), trained.params.get("model") if trained else None)
    return out
