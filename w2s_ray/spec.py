"""Sweep specs: YAML → typed, validated :class:`SweepSpec`.

A spec names datasets, a model ladder ordered by size, which (weak, strong)
pairs to run, losses with their ``alpha_max`` / ``warmup_frac`` grids, seeds,
training hyperparameters (global and per model) and a resources profile.
Loading is strict: an unknown key, a wrong type or an impossible value is a
:class:`~w2s_ray.config.ConfigError` whose path names the field
(``resources.max_concurrent_trials``, ``losses[1]``), raised before anything
is started or written. YAML is read with ``safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from w2s_ray.config import (
    ALPHA_LOSSES,
    LOSS_NAMES,
    ConfigError,
    ExperimentConfig,
    Finetune,
    LossConfig,
    ProbeConfig,
    Resources,
    SearchConfig,
    SplitConfig,
    TrainOverrides,
)

PAIR_RULES = ("weak<strong", "weak<=strong")


@dataclass(frozen=True)
class SplitSpec:
    n_weak: int = 1000
    n_strong: int = 1000
    n_test: int = 2000
    n_val: int = 0  # validation rows held out of the B side (needed by search)


@dataclass(frozen=True)
class SearchSpec:
    """Alpha search per (dataset, weak, strong, seed), once per objective (see config.SearchConfig)."""

    objectives: list[Literal["weak", "oracle"]] = field(default_factory=lambda: ["weak"])
    num_samples: int = 8
    max_concurrent: int = 2
    alpha_max: list[float] = field(default_factory=lambda: [0.0, 1.0])  # [low, high]
    warmup_frac: list[float] = field(default_factory=lambda: [0.05, 0.5])
    lr: list[float] | None = None  # [low, high], log-uniform; None: the model's default
    grace_period: int = 1
    reduction_factor: int = 2
    seed: int = 0

    def configs(self) -> list[SearchConfig]:
        return [SearchConfig(objective=o, num_samples=self.num_samples, max_concurrent=self.max_concurrent,
                             alpha_max=tuple(self.alpha_max), warmup_frac=tuple(self.warmup_frac),
                             lr=tuple(self.lr) if self.lr is not None else None, grace_period=self.grace_period,
                             reduction_factor=self.reduction_factor, seed=self.seed)
                for o in self.objectives]


@dataclass(frozen=True)
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

    steps: int | None = None
    chains: list[list[str]] | None = None
    slices: int = 0

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


@dataclass(frozen=True)
class TrainSpec:
    """Hyperparameter overrides; None keeps the model registry's default."""

    lr: float | None = None
    batch_size: int | None = None
    minibatch_size: int | None = None
    epochs: int | None = None
    max_len: int | None = None
    lora_r: int | None = None  # > 0: LoRA adapters of this rank (peft); 0: full fine-tuning
    length_buckets: bool | None = None  # batch rows of similar length together: less padding, other batches

    def overrides(self) -> TrainOverrides:
        return TrainOverrides(**dataclasses.asdict(self))


@dataclass(frozen=True)
class ResourcesSpec(Resources):
    """Where the sweep runs: :class:`~w2s_ray.config.Resources` plus the profile's name and storage.

    ``local`` and ``cluster`` profiles differ only in these values, never in code paths.
    """

    profile: Literal["local", "cluster"] = "local"
    storage: str | None = None  # artifact store + Tune results: a path or s3:// / gs:// URI

    def resources(self) -> Resources:
        return Resources(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Resources)})


@dataclass(frozen=True)
class FinetuneSpec:
    """Per-role finetune modes: ``{weak: full, strong: probe}`` is the paper's vision protocol on text."""

    weak: Literal["full", "probe"] = "full"
    strong: Literal["full", "probe"] = "full"


PART_FIXED = ("name", "resources", "tracking", "parts")  # sweep-wide: a part cannot change them


@dataclass(frozen=True)
class SweepSpec:
    name: str
    datasets: list[str]
    models: list[str]  # the ladder, smallest first
    pairs: str | list[list[str]] = "weak<strong"
    losses: list[str] = field(default_factory=lambda: ["xent"])
    alpha_max: list[float] = field(default_factory=lambda: [0.5])
    warmup_frac: list[float] = field(default_factory=lambda: [0.2])
    threshold_buffer: int = 0  # logconf: harden over the last N rows' predictions (tiny batches); 0: per batch
    seeds: list[int] = field(default_factory=lambda: [0])
    split: SplitSpec = field(default_factory=SplitSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    model_train: dict[str, TrainSpec] = field(default_factory=dict)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    search: SearchSpec | None = None
    bootstrap: BootstrapSpec | None = None
    finetune: Literal["full", "probe"] | FinetuneSpec = "full"  # probe: heads on cached frozen features
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    # students log GT test accuracy (analysis only, never selected on): true = once per epoch, N = N per epoch
    test_curves: bool | int = False
    description: str = ""
    tracking: Literal["mlflow", "wandb", "tensorboard"] | None = None  # log trainings and cells (w2s_ray.tracking)
    # grids whose union is the sweep: each part is a mapping of spec fields (all but name, resources and
    # parts) that replace the top level's for that grid; cells that two parts share run once
    parts: list[dict[str, Any]] = field(default_factory=list)

    def part_specs(self) -> list[SweepSpec]:
        """The grids of the sweep: the spec itself, or one spec per part."""
        if not self.parts:
            return [self]
        hints = typing.get_type_hints(SweepSpec)
        out = []
        for i, part in enumerate(self.parts):
            path = f"parts[{i}]"
            if not isinstance(part, dict):
                raise ConfigError(path, f"expected a mapping of spec fields, got {_kind(part)}")
            for name in part:
                if name not in hints or name in PART_FIXED:
                    allowed = [f for f in hints if f not in PART_FIXED]
                    raise ConfigError(_join(path, str(name)), f"not a field a part can set; allowed: "
                                                              f"{', '.join(allowed)}")
            changes = {k: _coerce(hints[k], v, _join(path, k)) for k, v in part.items()}
            out.append(dataclasses.replace(self, parts=[], **changes))
        return out

    @property
    def finetune_config(self) -> Finetune:
        if isinstance(self.finetune, FinetuneSpec):
            return Finetune(self.finetune.weak, self.finetune.strong)
        return Finetune.of(self.finetune)

    def pair_list(self) -> list[tuple[str, str]]:
        """The (weak, strong) pairs, in ladder order."""
        if isinstance(self.pairs, list):
            return [(w, s) for w, s in self.pairs]
        strict = self.pairs == "weak<strong"
        return [(w, s) for i, w in enumerate(self.models) for j, s in enumerate(self.models)
                if (i < j if strict else i <= j)]

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
        model_train = tuple(sorted((m, t.overrides()) for m, t in self.model_train.items()))
        variants: list[tuple[LossConfig, SearchConfig | None]] = [(loss, None) for loss in self.loss_configs()]
        if self.search is not None:
            variants += [(LossConfig("logconf"), search) for search in self.search.configs()]
        chains = self.chain_list()
        slices = self.bootstrap.slice_count(chains) if self.bootstrap is not None else 0
        common = {"train": self.train.overrides(), "model_train": model_train, "finetune": self.finetune_config,
                      "probe": self.probe, "test_curves": int(self.test_curves)}
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
        return SplitConfig(seed, self.split.n_weak, self.split.n_strong, self.split.n_test, self.split.n_val)


# -- strict loading -----------------------------------------------------------------


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


def spec_from_dict(data: dict[str, Any]) -> SweepSpec:
    spec = _build(SweepSpec, data, "")
    _check_semantics(spec)
    return spec


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """Plain data that :func:`spec_from_dict` turns back into an equal spec."""
    return dataclasses.asdict(spec)


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path or "spec", f"expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(_join(path, str(unknown[0])), f"unknown field; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(path, name), "required field is missing")
    try:
        return cls(**values)
    except ConfigError as e:  # a nested config's own check: prefix our path
        raise ConfigError(_join(path, e.path), e.message) from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (no silent conversions but int → float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if isinstance(value, dict):  # a mapping can only mean the mapping-shaped option
            options = [a for a in options if dataclasses.is_dataclass(a) or typing.get_origin(a) is dict] or options
        if len(options) == 1:  # Optional[X], or the one option of this shape: its own error, with its inner path
            return _coerce(options[0], value, path)
        errors = []
        for arg in options:
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(path, " or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"{value!r} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_kind(value)}")
        return [_coerce(args[0], v, _join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
        return {_coerce(args[0], k, path): _coerce(args[1], v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(path, f"expected {tp.__name__}, got {_kind(value)} {value!r}")
    return value


def _check_semantics(spec: SweepSpec) -> None:
    """Values that type-check but cannot run; every name is resolved before anything starts."""
    from w2s_ray.data import resolve_dataset
    from w2s_ray.models import resolve_model

    if not spec.name or spec.name in (".", "..") or any(c in spec.name for c in "/\\\0\n\r"):
        raise ConfigError("name", f"{spec.name!r} must be one plain path component (results go to "
                                  "<out>/sweeps/<name>): not empty, '.' or '..', no '/', '\\' or line breaks")
    _nonempty_unique(spec, ("datasets", "models", "losses", "alpha_max", "warmup_frac", "seeds"))
    for i, ds in enumerate(spec.datasets):
        _prefixed(f"datasets[{i}]", resolve_dataset, ds)
    for i, m in enumerate(spec.models):
        _prefixed(f"models[{i}]", resolve_model, m)
    for i, loss in enumerate(spec.losses):
        if loss not in LOSS_NAMES:
            raise ConfigError(f"losses[{i}]", f"unknown loss {loss!r}; allowed: {', '.join(LOSS_NAMES)}")
    for name in ("alpha_max", "warmup_frac"):
        for i, v in enumerate(getattr(spec, name)):
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name}[{i}]", f"{v!r} is outside [0, 1]")
    if spec.test_curves < 0:
        raise ConfigError("test_curves", f"{spec.test_curves} must be true/false or a number of points per epoch")
    for i, s in enumerate(spec.seeds):
        if s < 0:
            raise ConfigError(f"seeds[{i}]", f"{s} must be a non-negative integer")
    _check_pairs(spec)
    for m in spec.model_train:
        if m not in spec.models:
            raise ConfigError(f"model_train.{m}", f"{m!r} is not in models ({', '.join(spec.models)})")
    for path, obj in [("split", spec.split), ("train", spec.train)] + [
            (f"model_train.{m}", t) for m, t in spec.model_train.items()]:
        _prefixed(path, _check_positive_fields, obj)
    _check_effective_training(spec)
    if spec.split.n_val < 0:
        raise ConfigError("split.n_val", f"{spec.split.n_val} must be a non-negative integer")
    if spec.search is not None:
        _check_search(spec)
    if spec.bootstrap is not None:
        _check_bootstrap(spec)
    if spec.finetune_config.any_probe and spec.bootstrap is not None:
        raise ConfigError("finetune", "bootstrapping chains need finetune: full (probe mode runs direct "
                                      "students and alpha searches)")
    if spec.resources.profile == "cluster" and not spec.resources.storage:
        raise ConfigError("resources.storage", "a cluster profile needs shared storage (NFS path, s3:// or gs://)")
    for i, part in enumerate(spec.part_specs() if spec.parts else []):
        try:
            _check_semantics(part)
        except ConfigError as e:
            raise ConfigError(f"parts[{i}].{e.path}", e.message) from None


def _check_search(spec: SweepSpec) -> None:
    search = spec.search
    if not spec.split.n_val:
        raise ConfigError("split.n_val", "a search needs validation rows held out of half B (n_val > 0)")
    for name in ("alpha_max", "warmup_frac", "lr"):
        value = getattr(search, name)
        if value is not None and len(value) != 2:
            raise ConfigError(f"search.{name}", f"expected [low, high], got {value!r}")
    _nonempty_unique(search, ("objectives",), "search.")
    try:
        search.configs()
    except ConfigError as e:
        raise ConfigError(f"search.{e.path}", e.message) from None


def _check_bootstrap(spec: SweepSpec) -> None:
    b = spec.bootstrap
    if (b.steps is None) == (b.chains is None):
        raise ConfigError("bootstrap", "give either steps (chains through the ladder) or chains (explicit lists)")
    if b.steps is not None and b.steps < 2:
        raise ConfigError("bootstrap.steps", f"{b.steps} must be at least 2 (one step is the direct student)")
    for i, chain in enumerate(b.chains or []):
        if len(chain) < 3:
            raise ConfigError(f"bootstrap.chains[{i}]", f"{chain!r} needs weak, at least one middle model, strong")
        for j, m in enumerate(chain):
            if m not in spec.models:
                raise ConfigError(f"bootstrap.chains[{i}][{j}]", f"{m!r} is not in models ({', '.join(spec.models)})")
        if len(set(chain)) != len(chain):
            raise ConfigError(f"bootstrap.chains[{i}]", f"{chain!r} repeats a model")
    chains = spec.chain_list()
    if not chains:
        raise ConfigError("bootstrap.steps", f"no pair has {b.steps - 1} model(s) of the ladder between its "
                                             "weak and strong model")
    longest = max(len(c) - 1 for c in chains)
    if b.slices < 0 or (b.slices and b.slices < longest):
        raise ConfigError("bootstrap.slices", f"{b.slices} cannot feed a chain of {longest} steps")


def _prefixed(path: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ConfigError as e:
        if e.path.startswith(path.split("[")[0]):  # already a full path
            raise
        inner = e.path if e.path not in ("dataset", "model", "weak", "strong") else ""
        raise ConfigError(_join(path, inner) if inner else path, e.message) from None


def _check_positive_fields(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        # n_val 0: no validation split; lora_r 0: full fine-tuning
        if f.name not in ("n_val", "lora_r", "length_buckets") and v is not None and not v > 0:
            raise ConfigError(f.name, f"{v!r} must be positive")
        if f.name == "lora_r" and v is not None and v < 0:
            raise ConfigError(f.name, f"{v!r} must be 0 (full fine-tuning) or a positive rank")
    if isinstance(obj, TrainSpec) and obj.lr is not None and obj.lr >= 1:
        raise ConfigError("lr", f"{obj.lr!r} is outside (0, 1)")


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
        merged = {k: v for k, v in dataclasses.asdict(spec.train).items() if v is not None}
        merged.update({k: v for k, v in dataclasses.asdict(own).items() if v is not None} if own else {})
        for ds in spec.datasets:
            try:
                train_config(resolve_model(m), resolve_dataset(ds), TrainOverrides(**merged), 0)
            except ConfigError as e:
                own_sets = own is not None and (own.batch_size is not None or own.minibatch_size is not None)
                obj, source = (own, f"model_train.{m}") if own_sets else (spec.train, "train")
                field = e.path
                if field in ("batch_size", "minibatch_size"):  # blame the value the user set
                    field = "minibatch_size" if obj.minibatch_size is not None else "batch_size"
                raise ConfigError(f"{source}.{field}", f"{e.message} (model {m})") from None


def _nonempty_unique(spec: Any, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        values = getattr(spec, name)
        if not values:
            raise ConfigError(prefix + name, "must not be empty")
        seen = set()
        for i, v in enumerate(values):
            if v in seen:
                raise ConfigError(f"{prefix}{name}[{i}]", f"{v!r} is listed twice")
            seen.add(v)


def _check_pairs(spec: SweepSpec) -> None:
    if isinstance(spec.pairs, str):
        if spec.pairs not in PAIR_RULES:
            raise ConfigError("pairs", f"{spec.pairs!r} is not allowed; allowed: {', '.join(PAIR_RULES)} "
                                       "or a list of [weak, strong] pairs")
        if not spec.pair_list():
            raise ConfigError("pairs", f"{spec.pairs!r} gives no pair with {len(spec.models)} model(s)")
        return
    if not spec.pairs:
        raise ConfigError("pairs", "must not be empty")
    seen = set()
    for i, pair in enumerate(spec.pairs):
        if len(pair) != 2:
            raise ConfigError(f"pairs[{i}]", f"expected [weak, strong], got {pair!r}")
        if tuple(pair) in seen:
            raise ConfigError(f"pairs[{i}]", f"{pair!r} is listed twice")
        seen.add(tuple(pair))
        for j, m in enumerate(pair):
            if m not in spec.models:
                raise ConfigError(f"pairs[{i}][{j}]", f"{m!r} is not in models ({', '.join(spec.models)})")
