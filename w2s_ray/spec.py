"""Sweep specs: YAML → typed, validated :class:`SweepSpec`.

A spec names datasets, a model ladder ordered by size, which (weak, strong)
pairs to run, losses with their ``alpha_max`` / ``warmup_frac`` grids, seeds,
training hyperparameters (global and per model) and a resources profile.
Its sections are the experiment's own config classes (:mod:`w2s_ray.config`),
so a type, a range or a rule between fields is written once. Loading is
strict: an unknown key, a wrong type or an impossible value is a
:class:`~w2s_ray.config.ConfigError` whose path names the field
(``resources.max_concurrent_trials``, ``losses[1]``), raised before anything
is started or written. YAML is read with ``safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import AfterValidator, Discriminator, Field, Tag

from w2s_ray.config import (
    ALPHA_LOSSES,
    Bool,
    ConfigError,
    ExperimentConfig,
    Finetune,
    FinetuneField,
    GenerativeFinetune,
    LossConfig,
    LossName,
    NonNegInt,
    Objective,
    ProbeConfig,
    Resources,
    SearchConfig,
    SearchSettings,
    SplitConfig,
    SplitSizes,
    Str,
    TestCurves,
    Tracker,
    TrainOverrides,
    UniqueList,
    Unit,
    config,
    config_error,
)

PairRule = Literal["weak<strong", "weak<=strong"]
Pair = Annotated[list[Str], Field(min_length=2, max_length=2)]  # [weak, strong]
# a rule or an explicit list (tags, which start with "~", are left out of error paths)
Pairs = Annotated[Annotated[PairRule, Tag("~rule")] | Annotated[UniqueList[Pair], Tag("~list")],
                  Discriminator(lambda v: "~rule" if isinstance(v, str) else "~list")]


@config
class SearchSpec(SearchSettings):
    """Alpha search per (dataset, weak, strong, seed), once per objective (see config.SearchConfig)."""

    objectives: UniqueList[Objective] = dataclasses.field(default_factory=lambda: ["weak"])

    def configs(self) -> list[SearchConfig]:
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(SearchSettings)}
        return [SearchConfig(objective=o, **shared) for o in self.objectives]


@config
class BootstrapSpec:
    """Bootstrapping chains (paper §4.3.1), run next to the direct students with the same losses.

    ``steps``: for every pair, a chain of that many steps through models of
    the ladder between weak and strong (evenly spaced; pairs with too few
    models between them get none). ``chains``: explicit chains, weak first.
    ``slices``: how many disjoint slices half B is cut into for the steps
    (step j trains on slice j); 0 = the longest chain's step count, so every
    chain of the sweep uses the same slices and chains sharing a prefix share
    its stages.
    """

    steps: Annotated[int, Field(ge=2)] | None = None  # 1 step is the direct student
    # weak, at least one middle model, strong
    chains: list[Annotated[UniqueList[Str], Field(min_length=3)]] | None = None
    slices: NonNegInt = 0

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.chains is None):
            raise ConfigError("", "give either steps (chains through the ladder) or chains (explicit lists)")

    def chain_list(self, ladder: list[str], pairs: list[tuple[str, str]]) -> list[list[str]]:
        """Every chain, weak first and strong last."""
        if self.chains is not None:
            return [list(c) for c in self.chains]
        out = []
        for weak, strong in pairs:
            i, j = ladder.index(weak), ladder.index(strong)
            between = ladder[i + 1:j]
            need = (self.steps or 0) - 1
            if need < 1 or len(between) < need:
                continue
            picks = [between[round(k * (len(between) + 1) / (need + 1)) - 1] for k in range(1, need + 1)]
            out.append([weak, *picks, strong])
        return out

    def slice_count(self, chains: list[list[str]]) -> int:
        return self.slices or max((len(c) - 1 for c in chains), default=0)


@config
class ResourcesSpec(Resources):
    """Where the sweep runs: :class:`~w2s_ray.config.Resources` plus the profile's name and storage.

    ``local`` and ``cluster`` profiles differ only in these values, never in code paths.
    """

    profile: Literal["local", "cluster"] = "local"
    storage: Str | None = None  # artifact store + Tune results: a path or s3:// / gs:// URI

    def __post_init__(self) -> None:
        if self.profile == "cluster" and not self.storage:
            raise ConfigError("storage", "a cluster profile needs shared storage (NFS path, s3:// or gs://)")

    def resources(self) -> Resources:
        return Resources(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Resources)})


def _plain_name(name: str) -> str:
    if not name or name in (".", "..") or any(c in name for c in "/\\\0\n\r"):
        raise ConfigError("", f"{name!r} must be one plain path component (results go to <out>/sweeps/<name>): "
                              "not empty, '.' or '..', no '/', '\\' or line breaks")
    return name


PART_FIXED = ("name", "resources", "tracking", "parts")  # sweep-wide: a part cannot change them


@config
class SweepSpec:
    name: Annotated[Str, AfterValidator(_plain_name)]
    datasets: UniqueList[Str]
    models: UniqueList[Str]  # the ladder, smallest first
    pairs: Pairs = "weak<strong"
    losses: UniqueList[LossName] = dataclasses.field(default_factory=lambda: ["xent"])
    alpha_max: UniqueList[Unit] = dataclasses.field(default_factory=lambda: [0.5])
    warmup_frac: UniqueList[Unit] = dataclasses.field(default_factory=lambda: [0.2])
    threshold_buffer: NonNegInt = 0  # logconf: harden over the last N rows' predictions (tiny batches); 0: per batch
    seeds: UniqueList[NonNegInt] = dataclasses.field(default_factory=lambda: [0])
    split: SplitSizes = dataclasses.field(default_factory=SplitSizes)
    train: TrainOverrides = dataclasses.field(default_factory=TrainOverrides)
    model_train: dict[Str, TrainOverrides] = dataclasses.field(default_factory=dict)
    resources: ResourcesSpec = dataclasses.field(default_factory=ResourcesSpec)
    search: SearchSpec | None = None
    bootstrap: BootstrapSpec | None = None
    finetune: FinetuneField = dataclasses.field(default_factory=Finetune)  # probe: heads on cached frozen features
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    # students log GT test accuracy (analysis only, never selected on): true = once per epoch, N = N per epoch
    test_curves: TestCurves = 0
    description: Str = ""
    tracking: Tracker | None = None  # log trainings and cells (w2s_ray.tracking)
    generative_finetune: GenerativeFinetune | None = None  # adapt the strong model to the task's texts first
    early_stopping: Bool = False  # keep each training's best epoch on validation (students: weak labels only)
    # grids whose union is the sweep: each part is a mapping of spec fields (all but name, resources,
    # tracking and parts) that replace the top level's for that grid; cells that two parts share run once
    parts: list[dict[Str, Any]] = dataclasses.field(default_factory=list)

    def part_specs(self) -> list[SweepSpec]:
        """The grids of the sweep: the spec itself, or one spec per part."""
        if not self.parts:
            return [self]
        out = []
        for i, part in enumerate(self.parts):
            for name in part:
                if name in PART_FIXED:
                    allowed = [f.name for f in dataclasses.fields(SweepSpec) if f.name not in PART_FIXED]
                    raise ConfigError(f"parts[{i}].{name}", f"not a field a part can set; allowed: "
                                                           f"{', '.join(allowed)}")
            out.append(_validate({**spec_to_dict(self), "parts": [], **part}, f"parts[{i}]"))
        return out

    def pair_list(self) -> list[tuple[str, str]]:
        """The (weak, strong) pairs, in ladder order."""
        if isinstance(self.pairs, list):
            return [(w, s) for w, s in self.pairs]
        from w2s_ray.models import supervisor_only

        strict = self.pairs == "weak<strong"
        return [(w, s) for i, w in enumerate(self.models) for j, s in enumerate(self.models)
                if (i < j if strict else i <= j) and not supervisor_only(s)]

    def loss_configs(self) -> list[LossConfig]:
        """xent / product once; logconf once per (alpha_max, warmup_frac)."""
        out: list[LossConfig] = []
        for name in self.losses:
            if name in ALPHA_LOSSES:
                buffer = self.threshold_buffer if name == "logconf" else 0
                out += [LossConfig(name, a, w, buffer) for a, w in itertools.product(self.alpha_max, self.warmup_frac)]
            else:
                out.append(LossConfig(name))
        return out

    def experiments(self) -> list[ExperimentConfig]:
        """Every cell of the grid: dataset × seed × pair × loss variant (the union over parts)."""
        if self.parts:
            return list(dict.fromkeys(c for part in self.part_specs() for c in part.experiments()))
        model_train = tuple(sorted(self.model_train.items()))
        variants: list[tuple[LossConfig, SearchConfig | None]] = [(loss, None) for loss in self.loss_configs()]
        if self.search is not None:
            variants += [(LossConfig("logconf"), search) for search in self.search.configs()]
        chains = self.chain_list()
        slices = self.bootstrap.slice_count(chains) if self.bootstrap is not None else 0
        common = {"train": self.train, "model_train": model_train, "finetune": self.finetune,
                  "probe": self.probe, "test_curves": self.test_curves,
                  "generative_finetune": self.generative_finetune, "early_stopping": self.early_stopping}
        direct = [
            ExperimentConfig(dataset=ds, weak=weak, strong=strong, loss=loss, split=self._split(seed),
                             search=search, **common)
            for ds, seed, (weak, strong), (loss, search) in itertools.product(
                self.datasets, self.seeds, self.pair_list(), variants)
        ]
        boot = [
            ExperimentConfig(dataset=ds, weak=chain[0], strong=chain[-1], loss=loss, split=self._split(seed),
                             chain=tuple(chain[1:-1]), bootstrap_slices=slices, **common)
            for ds, seed, chain, loss in itertools.product(self.datasets, self.seeds, chains, self.loss_configs())
        ]
        return direct + boot

    def chain_list(self) -> list[list[str]]:
        return self.bootstrap.chain_list(self.models, self.pair_list()) if self.bootstrap is not None else []

    def _split(self, seed: int) -> SplitConfig:
        return SplitConfig(seed, **dataclasses.asdict(self.split))


# -- loading -----------------------------------------------------------------------------


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec file (errors name the field path)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("spec", f"sweep spec {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("spec", f"{path} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError("spec", f"{path} must hold a mapping of sweep fields, got {type(data).__name__}")
    data.setdefault("name", p.stem)
    return spec_from_dict(data)


_SPEC = pydantic.TypeAdapter(SweepSpec)


def _validate(data: Any, prefix: str = "") -> SweepSpec:
    """Types, ranges and the rules inside each section; then the rules that need the registries."""
    try:
        spec = _SPEC.validate_python(data)
    except pydantic.ValidationError as e:
        raise config_error(e, SweepSpec, prefix) from None
    try:
        _check_semantics(spec)
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e.path}" if prefix else e.path, e.message) from None
    return spec


def spec_from_dict(data: dict[str, Any]) -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError("spec", f"expected a mapping of sweep fields, got {type(data).__name__}")
    return _validate(data)


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """Plain data (lists, no tuples: YAML-safe) that :func:`spec_from_dict` turns back into an equal spec."""
    return _SPEC.dump_python(spec, mode="json")


# -- rules that need the registries ------------------------------------------------------------


def _check_semantics(spec: SweepSpec) -> None:
    """Values that type-check but cannot run; every name is resolved before anything starts."""
    from w2s_ray.data import resolve_dataset
    from w2s_ray.models import resolve_model

    for i, ds in enumerate(spec.datasets):
        _prefixed(f"datasets[{i}]", resolve_dataset, ds)
    for i, m in enumerate(spec.models):
        _prefixed(f"models[{i}]", resolve_model, m)
    if isinstance(spec.pairs, str) and not spec.pair_list():
        raise ConfigError("pairs", f"{spec.pairs!r} gives no pair with {len(spec.models)} model(s)")
    from w2s_ray.models import supervisor_only

    for i, pair in enumerate(spec.pairs if isinstance(spec.pairs, list) else []):
        for j, m in enumerate(pair):
            _in_ladder(spec, f"pairs[{i}][{j}]", m)
        if supervisor_only(pair[1]):
            raise ConfigError(f"pairs[{i}][1]", f"{pair[1]} only labels: it can be a weak model, not a student")
    for m in spec.model_train:
        _in_ladder(spec, f"model_train.{m}", m)
    _check_effective_training(spec)
    if spec.bootstrap is not None:
        for i, chain in enumerate(spec.bootstrap.chains or []):
            for j, m in enumerate(chain):
                _in_ladder(spec, f"bootstrap.chains[{i}][{j}]", m)
        if not spec.chain_list():
            raise ConfigError("bootstrap.steps", f"no pair has {spec.bootstrap.steps - 1} model(s) of the ladder "
                                                 "between its weak and strong model")
    spec.experiments()  # the cells' own rules (search needs n_val, chains need full finetuning, slices); parts


def _in_ladder(spec: SweepSpec, path: str, model: str) -> None:
    if model not in spec.models:
        raise ConfigError(path, f"{model!r} is not in models ({', '.join(spec.models)})")


def _prefixed(path: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ConfigError as e:
        inner = e.path if e.path not in ("dataset", "model", "weak", "strong") else ""
        raise ConfigError(f"{path}.{inner}" if inner else path, e.message) from None


def _check_effective_training(spec: SweepSpec) -> None:
    """Each model's merged hyperparameters (registry, then ``train``, then ``model_train``) must be trainable.

    Planning refuses them anyway (``minibatch_size`` must divide ``batch_size``), but by then the error
    no longer names the spec field to change.
    """
    from w2s_ray.data import resolve_dataset
    from w2s_ray.models import resolve_model
    from w2s_ray.plan import train_config

    for m in spec.models:
        own = spec.model_train.get(m)
        merged = ExperimentConfig("", m, m, train=spec.train, model_train=((m, own),) if own else ()).overrides_for(m)
        for ds in spec.datasets:
            try:
                train_config(resolve_model(m), resolve_dataset(ds), merged, 0)
            except ConfigError as e:
                own_sets = own is not None and (own.batch_size is not None or own.minibatch_size is not None)
                obj, source = (own, f"model_train.{m}") if own_sets else (spec.train, "train")
                field = e.path
                if field in ("batch_size", "minibatch_size"):  # blame the value the user set
                    field = "minibatch_size" if obj.minibatch_size is not None else "batch_size"
                raise ConfigError(f"{source}.{field}", f"{e.message} (model {m})") from None
