"""What a stage is, and what the engine knows about a kind of stage: one :class:`StageKind` each.

A stage is one node of a plan: a content-addressed unit of work whose
artifact, once committed, is never produced again. Its *kind* says what
the work is. Everything the engine needs to know about a kind (its
parameters, where it runs, what it takes from the pools, its cost
estimate, its threads, its runner and how a progress line describes it)
lives in that kind's :class:`StageKind`, defined in one module under
:mod:`w2s_ray.stages` beside the builder the planner calls. The plan,
the scheduler, progress and tracking ask ``stage.type``; none of them
switches on a kind's name. A new kind is one module and a
:func:`register` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from w2s_ray.artifacts import ArtifactStore, stage_key
from w2s_ray.config import Resources

Meta = dict[str, Any]
WHERE = ("thread", "task", "trial")
THREADS = ("all", "one", "shared")


@dataclass(frozen=True)
class Stage:
    key: str
    kind: str
    name: str
    params: dict[str, Any] = field(compare=False, hash=False)
    inputs: dict[str, str] = field(compare=False, hash=False)
    role: str = field(default="", compare=False)  # for people: weak, labels, ceiling, student, predict

    @property
    def deps(self) -> tuple[str, ...]:
        return tuple(self.inputs.values())

    @property
    def type(self) -> StageKind:
        """What the engine knows about this stage's kind (see :data:`KINDS`)."""
        return kind_of(self.kind)

    @property
    def typed(self) -> Any:
        """The parameters as the kind's frozen dataclass (attribute access; a missing one is an error)."""
        return self.type.params(**self.params)


@dataclass(frozen=True)
class StageContext:
    """Everything a runner needs besides the stage; picklable (it travels to trials and tasks)."""

    store_uri: str
    resources: Resources
    storage_path: str
    threads: int  # torch threads: a function of the plan and the resources profile (see engine threads)

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.store_uri)


def no_request(stage: Stage, threads: int, resources: Resources) -> dict[str, float]:
    """Nothing from the pools (data stages: seconds of pyarrow in a driver thread)."""
    return {}


def cores_request(stage: Stage, threads: int, resources: Resources) -> dict[str, float]:
    """Its threads' cores on a local CPU run (a linear head, a TF-IDF fit)."""
    return {"cores": threads}


def rows_cost(stage: Stage, rows: dict[str, int], model: dict[str, Any] | None) -> float:
    """~0: data stages and linear heads are seconds beside any training (TFLOPs, like the other costs)."""
    return sum(rows.values()) * 1e-6


def plain(stage: Stage, meta: Meta) -> str:
    """A progress line's default account of a finished stage."""
    return "done"


@dataclass(frozen=True)
class StageKind:
    """One kind of stage, everything the engine knows about it.

    ``where`` runs it: ``thread`` (a driver thread: data builds, and Ray Data
    jobs, which drive their streaming execution from the driver), ``task`` (a
    Ray task reserving ``task_cpus``) or ``trial`` (a Ray Tune function trial
    that launches a Ray Train fine-tuning). ``threads``: torch threads are
    ``all`` the cores, ``one``, or the cores ``shared`` with the trainings of
    its plan layer. ``request`` is what it takes from the scheduler's pools
    while it runs; ``cost`` its estimated compute (TFLOPs: only ratios matter)
    from the rows of each split of its data and, for an inference, the model
    it runs.
    """

    name: str
    doc: str  # one line for people
    params: type  # a frozen dataclass: the parameters a stage of this kind may have
    run: Callable[[Stage, StageContext], Meta]
    describe: Callable[[Stage, Meta], str] = plain
    where: str = "thread"
    task_cpus: float = 0.0
    threads: str = "all"
    request: Callable[[Stage, int, Resources], dict[str, float]] = no_request
    cost: Callable[[Stage, dict[str, int], dict[str, Any] | None], float] = rows_cost
    late: bool = False  # placed as late as its consumers allow (see Plan.layers)
    learns: bool = False  # fits a model: one tracked run per stage
    uses_ray: bool = True  # False: a plan of only such stages never starts Ray
    dashboard: bool = False  # its runs need Ray's dashboard (a nested Tune experiment's state API)
    training: Callable[[Stage], dict[str, Any]] | None = None  # fine-tunes in a trial: its hyperparameters
    gpu: Callable[[Stage], dict[str, Any] | None] | None = None  # the GPUs one of its trials needs
    deals: Callable[[Stage], dict[str, int]] | None = None  # a data kind: the rows of each split it deals
    prepare: Callable[[Resources], None] | None = None  # once before a run that has stages of this kind

    def __post_init__(self) -> None:
        if self.where not in WHERE or self.threads not in THREADS:
            raise ValueError(f"stage kind {self.name}: where {self.where!r} (one of {WHERE}), threads "
                             f"{self.threads!r} (one of {THREADS})")
        if not dataclasses.is_dataclass(self.params):
            raise TypeError(f"stage kind {self.name}: params must be a dataclass, not {self.params!r}")

    def make(self, name: str, params: dict[str, Any], inputs: dict[str, str], role: str) -> Stage:
        """A stage of this kind, keyed by its kind, parameters and inputs; a parameter it lacks is an error."""
        self.check(params)
        return Stage(stage_key(self.name, params, inputs), self.name, name, params, inputs, role)

    def check(self, params: dict[str, Any]) -> None:
        known = [f.name for f in dataclasses.fields(self.params)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"a {self.name} stage has no parameter {', '.join(map(repr, unknown))} "
                             f"(its parameters: {', '.join(known)})")
        self.params(**params)  # a required one missing: TypeError naming it


KINDS: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    """Add a kind to the registry the engine iterates; a second kind of the same name is an error."""
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(f"stage kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    KINDS.pop(name, None)


def kind_of(name: str) -> StageKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"no stage kind {name!r} (registered: {', '.join(sorted(KINDS))})") from None
