"""Typed, validated configuration for one weak-to-strong experiment.

Every value that can change a result lives here, so the artifact keys
(see :mod:`w2s_ray.artifacts`) can be computed from these objects alone.
The classes are pydantic dataclasses: types and ranges are declared once as
annotations, cross-field rules live in the ``__post_init__`` of the class
that owns them, and the same classes validate the CLI's flags and a sweep
spec's YAML (:mod:`w2s_ray.spec` nests them). Scalars are strict (``"1"`` is
no int, ``true`` no number, NaN and inf no float); an int is taken for a float.
A bad value raises :class:`ConfigError` naming its field path and what is
allowed, before anything is started or written.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, BeforeValidator, Field, Strict
from pydantic.dataclasses import dataclass

LossName = Literal["xent", "logconf", "product", "kl", "entropy"]
FinetuneMode = Literal["full", "probe"]
Tracker = Literal["mlflow", "wandb", "tensorboard"]
Objective = Literal["weak", "oracle"]
LOSS_NAMES: tuple[str, ...] = typing.get_args(LossName)
ALPHA_LOSSES: tuple[str, ...] = ("logconf", "entropy")  # losses with a confidence term ramped to alpha_max
FINETUNE_MODES: tuple[str, ...] = typing.get_args(FinetuneMode)
TRACKERS: tuple[str, ...] = typing.get_args(Tracker)
OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)


class ConfigError(ValueError):
    """A bad configuration value; ``path`` names the offending field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# -- value types: each constraint written once ------------------------------------------------

Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]


def _within(lo: float, hi: float, closed: bool) -> AfterValidator:
    """A range check whose message names the whole interval (a ``Field(ge=, le=)`` error names one bound)."""
    def check(v: float) -> float:
        if not (lo <= v <= hi if closed else lo < v < hi):
            raise ConfigError("", f"{v!r} is outside {'[' if closed else '('}{lo:g}, {hi:g}{']' if closed else ')'}")
        return v
    return AfterValidator(check)


Unit = Annotated[float, Strict(), _within(0, 1, closed=True)]
OpenUnit = Annotated[float, Strict(), _within(0, 1, closed=False)]  # learning rates
# points per epoch: true = 1, false = 0
TestCurves = Annotated[NonNegInt, BeforeValidator(lambda v: int(v) if isinstance(v, bool) else v)]

T = TypeVar("T")


def _no_duplicates(values: list[T]) -> list[T]:
    seen = set()
    for i, v in enumerate(values):
        key = tuple(v) if isinstance(v, list) else v
        if key in seen:
            raise ConfigError(f"[{i}]", f"{v!r} is listed twice")
        seen.add(key)
    return values


# a non-empty list without repeats (a sweep's grid axes)
UniqueList = Annotated[list[T], Field(min_length=1), AfterValidator(_no_duplicates)]


def _tuple_range(lo: float, hi: float, closed: bool) -> Any:
    """A ``[low, high]`` pair inside ``lo..hi`` with low <= high (YAML lists are taken for the tuple)."""
    def check(pair: tuple[float, float]) -> tuple[float, float]:
        if pair[0] > pair[1]:
            raise ConfigError("[1]" if closed else "", f"{list(pair)} must satisfy low <= high")
        return pair
    bound = Unit if closed else OpenUnit
    return Annotated[tuple[bound, bound], AfterValidator(check)]


UnitRange = _tuple_range(0, 1, closed=True)
LrRange = _tuple_range(0, 1, closed=False)


# -- pydantic errors -> one ConfigError ---------------------------------------------------------

CONFIG = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)


def config(cls: type[T]) -> type[T]:
    """A frozen, validated pydantic dataclass whose constructor raises :class:`ConfigError`.

    Positional construction, ``dataclasses.asdict`` and ``dataclasses.replace``
    (which validates again) work as for plain dataclasses, so artifact keys
    computed from them are what they were.
    """
    cls = dataclass(frozen=True, config=CONFIG)(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except pydantic.ValidationError as e:
            raise config_error(e, type(self), positional=True) from None

    cls.__init__ = __init__
    return cls


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path and name else path or name


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fields_at(root: Any, loc: tuple) -> list[str]:
    """The field names of the dataclass at ``loc`` under ``root`` (for "unknown field; allowed: ...")."""
    tp = root
    for part in (*loc, None):
        while True:  # unwrap Annotated and Optional
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if origin is Annotated:
                tp = args[0]
            elif origin in (typing.Union, types.UnionType) and type(None) in args:
                tp = next(a for a in args if a is not type(None))
            else:
                break
        if part is None:
            break
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp, include_extras=True).get(part)
        elif typing.get_origin(tp) in (list, tuple, dict):
            tp = typing.get_args(tp)[-1 if typing.get_origin(tp) is dict else 0]
        else:
            return []
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _message(err: dict[str, Any], root: Any, loc: tuple) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in ("missing", "missing_argument"):
        return "required field is missing"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = _fields_at(root, loc[:-1])
        return "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "unexpected_positional_argument":
        return "too many positional values"
    if kind == "literal_error":
        return f"{value!r} is not allowed; allowed: {ctx['expected'].replace(chr(39), '').replace(' or ', ', ')}"
    types = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
             "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping", "dataclass_type": "a mapping"}
    if kind in types:
        return f"expected {types[kind]}, got {_kind(value)} {value!r}"
    if kind == "finite_number":
        return f"{value!r} must be a finite number"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        if kind == "greater_than" and limit == 0:
            return f"{value!r} must be positive"
        return f"{value!r} must be {bounds[kind]} {limit:g}"
    if kind == "too_short" and ctx.get("min_length") == 1 and ctx.get("field_type") == "List":
        return "must not be empty"
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length", ctx.get("max_length"))
        if n is None:
            return f"too few values, got {value!r}"
        return f"expected {'at least ' if kind == 'too_short' and n != 2 else ''}{n} values, got {value!r}"
    if kind == "value_error":
        return ctx["error"].message if isinstance(ctx.get("error"), ConfigError) else str(ctx.get("error"))
    return err["msg"][0].lower() + err["msg"][1:]


def config_error(e: pydantic.ValidationError, root: Any, prefix: str = "", positional: bool = False) -> ConfigError:
    """The first error of ``e`` as a ConfigError whose path is the field path (``pairs[0][1]``).

    ``root`` is the validated class; ``positional``: a leading int in a location is an argument's position.
    """
    err = e.errors()[0]
    if err["type"] == "missing" and err["loc"] and isinstance(err["loc"][-1], int):  # a short [low, high]
        err = {**err, "type": "too_short", "loc": err["loc"][:-1], "ctx": {}}
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("~", "[key]"))))
    if err["type"] == "invalid_key":  # a mapping's key that is no string: no field has that name
        err = {**err, "type": "extra_forbidden"}
        loc = (*loc[:-1], str(loc[-1]))
    if positional and loc and isinstance(loc[0], int):
        names = [f.name for f in dataclasses.fields(root)]
        loc = (names[loc[0]] if loc[0] < len(names) else str(loc[0]), *loc[1:])
    path = prefix
    for part in loc:
        path = join(path, part)
    inner = (err.get("ctx") or {}).get("error")
    if err["type"] == "value_error" and isinstance(inner, ConfigError):  # a rule's own path inside the object
        path = path + inner.path if inner.path.startswith("[") else join(path, inner.path)
    return ConfigError(path or root.__name__, _message(err, root, loc))


# -- the configs ----------------------------------------------------------------------------


@config
class LossConfig:
    """The student's loss. ``alpha_max``/``warmup_frac`` only matter for logconf and entropy.

    ``threshold_buffer`` (logconf only): harden against a threshold over the
    last N rows' predictions instead of the optimizer batch's (tiny batches).
    """

    name: LossName = "xent"
    alpha_max: Unit = 0.5
    warmup_frac: Unit = 0.2
    threshold_buffer: NonNegInt = 0

    def __post_init__(self) -> None:
        if self.threshold_buffer and self.name != "logconf":
            raise ConfigError("threshold_buffer", f"only logconf hardens against a threshold, not {self.name}")

    @property
    def uses_alpha(self) -> bool:
        return self.name in ALPHA_LOSSES

    def effective(self) -> dict[str, Any]:
        """Only the fields that change training, so xent keys ignore alpha."""
        if not self.uses_alpha:
            return {"name": self.name}
        out: dict[str, Any] = {"name": self.name, "alpha_max": self.alpha_max, "warmup_frac": self.warmup_frac}
        if self.threshold_buffer:
            out["threshold_buffer"] = self.threshold_buffer
        return out

    @property
    def label(self) -> str:
        if not self.uses_alpha:
            return self.name
        buffer = f",buf={self.threshold_buffer}" if self.threshold_buffer else ""
        return f"{self.name}(a={self.alpha_max:g}{buffer})"


@config
class ProbeConfig:
    """Linear-probe training on cached features (``finetune: probe``): a head only, so cheap to sweep."""

    lr: OpenUnit = 1e-2
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 32
    weight_decay: Unit = 0.0


@config
class GenerativeFinetune:
    """Generative finetuning (paper §5.2.2): the strong model trained as a language model on the task's
    unlabelled texts (halves A and B) before its ceiling and students; see :mod:`w2s_ray.adapt`."""

    epochs: PositiveInt = 1
    lr: OpenUnit = 5e-5
    max_len: PositiveInt = 128
    batch_size: PositiveInt = 16
    mask_prob: OpenUnit = 0.15  # masked LM: the share of real tokens that become targets (BERT's 15%)

    @property
    def label(self) -> str:
        """What a results row says about it (:data:`NOT_ADAPTED` when not used)."""
        return f"lm {self.epochs}ep lr={self.lr:g}"


NOT_ADAPTED = "off"  # a results row's generative_finetune where the strong model was not adapted


def _finetune_of(value: Any) -> Any:
    """A mode name means that mode for both roles."""
    if isinstance(value, str):
        if value not in FINETUNE_MODES:
            raise ConfigError("", f"{value!r} is not allowed; allowed: {', '.join(FINETUNE_MODES)}, "
                                  "or {weak: <mode>, strong: <mode>}")
        return {"weak": value, "strong": value}
    return value


@config
class Finetune:
    """How each role's model learns: ``full`` (every weight) or ``probe`` (a head on cached frozen features).

    ``Finetune("full", "probe")`` is the paper's vision protocol on text: a
    fully trained weak model's soft labels supervise linear probes on a big
    model's frozen features. The strong role covers the ceiling and the student.
    """

    weak: FinetuneMode = "full"
    strong: FinetuneMode = "full"

    @property
    def label(self) -> str:
        """full, probe, or weak=full/strong=probe (for tables)."""
        return self.weak if self.weak == self.strong else f"weak={self.weak}/strong={self.strong}"

    @property
    def any_probe(self) -> bool:
        return "probe" in (self.weak, self.strong)


FinetuneField = Annotated[Finetune, BeforeValidator(_finetune_of)]  # a Finetune, its mapping, or a mode name


@config
class SplitSizes:
    """Sizes of the three disjoint splits (a sweep spec's ``split``: its seeds come from ``seeds``)."""

    n_weak: PositiveInt = 1000  # half A: weak model's GT training rows
    n_strong: PositiveInt = 1000  # half B: weak labels, student and ceiling training rows
    n_test: PositiveInt = 2000
    n_val: NonNegInt = 0  # held out of the B side for model selection (alpha search); 0: none

    @property
    def total(self) -> int:
        """Rows the splits take from a dataset."""
        return self.n_test + self.n_weak + self.n_strong + self.n_val


@config
class _Seed:
    seed: NonNegInt = 0


@config
class SplitConfig(SplitSizes, _Seed):  # _Seed last in the bases puts seed first: SplitConfig(seed, n_weak, ...)
    """The split sizes and the seed that draws A and B.

    The test set is drawn with a seed-independent salt, so every seed of a
    sweep is measured on the same GT test rows.
    """

    def effective(self) -> dict[str, Any]:
        """Key material: ``n_val`` only when used, so runs without validation keep their keys."""
        d = dataclasses.asdict(self)
        if not self.n_val:
            del d["n_val"]
        return d


@config
class TrainConfig:
    """Fine-tuning hyperparameters of one training stage (effective: no None)."""

    lr: OpenUnit
    batch_size: PositiveInt
    minibatch_size: PositiveInt
    epochs: PositiveInt
    max_len: PositiveInt
    weight_decay: Unit = 0.0
    seed: NonNegInt = 0

    def __post_init__(self) -> None:
        if self.batch_size % self.minibatch_size:
            raise ConfigError("minibatch_size", f"{self.minibatch_size} must divide batch_size {self.batch_size}")


@config
class TrainOverrides:
    """User overrides on top of the model registry's defaults (None = default)."""

    lr: OpenUnit | None = None
    batch_size: PositiveInt | None = None
    minibatch_size: PositiveInt | None = None
    epochs: PositiveInt | None = None
    max_len: PositiveInt | None = None
    lora_r: NonNegInt | None = None  # > 0: train low-rank adapters (peft) instead of every weight; 0: full
    length_buckets: Bool | None = None  # batch rows of similar length together (less padding)
    weight_decay: Unit | None = None  # AdamW's decoupled weight decay; None: 0


@config
class LoraConfig:
    """Low-rank adapters (peft) on the backbone; the classification head still trains in full.

    ``target_modules`` None takes peft's default for the model family
    (BERT: query/value, MPNet: q/v, GPT-2: c_attn, Llama/Qwen: q_proj/v_proj).
    """

    r: PositiveInt
    alpha: PositiveInt | None = None  # None: 2·r
    dropout: Unit = 0.0
    target_modules: tuple[Str, ...] | None = None

    def effective(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha or 2 * self.r, "dropout": self.dropout,
                "target_modules": list(self.target_modules) if self.target_modules else None}


@config
class Resources:
    """Where and how wide to run. Local and cluster runs differ only here.

    ``address`` None starts a local Ray cluster with ``num_cpus`` logical CPUs
    (more than the cores on purpose: trials, Train workers and Ray Data
    ingest each need a reservation: on 2 cores, a trial and its Train worker
    at 1 CPU each leave nothing for the ingest's read tasks, and the run
    hangs). ``torch_threads`` is what each worker really computes with.
    """

    address: Str | None = None
    num_cpus: PositiveInt | None = None  # None: sized from the machine
    trial_cpus: PositiveFloat = 0.5
    worker_cpus: PositiveFloat = 1.0
    num_workers: PositiveInt = 1
    use_gpu: Bool = False
    max_concurrent_trials: PositiveInt = 2
    torch_threads: PositiveInt | None = None  # None: sized from the machine
    max_failures: Annotated[int, Strict(), Field(ge=-1)] = 1  # -1: retry forever
    driver_resource: Str | None = None  # a custom resource only non-spot nodes offer
    dashboard: Bool = False  # a local cluster's Ray dashboard (search stages start it: they need the State API)

    @property
    def local_cpu(self) -> bool:
        """A run on this machine's CPUs: its cores are a pool the scheduler shares out (threads per stage)."""
        return not self.address and not self.use_gpu


@config
class SearchSettings:
    """What an alpha search tries: TPE over logconf's knobs, ASHA on per-epoch validation.

    Shared by :class:`SearchConfig` (one objective, one cell) and a spec's
    ``search`` (a list of objectives).
    """

    num_samples: PositiveInt = 8
    max_concurrent: PositiveInt = 2
    alpha_max: UnitRange = (0.0, 1.0)
    warmup_frac: UnitRange = (0.05, 0.5)
    lr: LrRange | None = None  # log-uniform range; None: the model's default
    grace_period: PositiveInt = 1  # epochs before ASHA may stop a trial
    reduction_factor: Annotated[int, Strict(), Field(ge=2)] = 2
    seed: NonNegInt = 0


@config
class SearchConfig(SearchSettings):
    """An alpha search for one cell.

    ``objective`` picks what selection sees on the validation split:
    ``weak`` = accuracy against the weak labels (no ground truth anywhere);
    ``oracle`` = GT validation accuracy, as the paper tuned (flagged in every output).
    The GT test set is never used by either.
    """

    objective: Objective = "weak"


@config
class ExperimentConfig:
    """One cell: a (weak, strong) pair on a dataset with a loss and a seed.

    Owns the rules between its parts; their paths are the spec's, since specs build these.
    """

    dataset: Str
    weak: Str
    strong: Str
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    train: TrainOverrides = dataclasses.field(default_factory=TrainOverrides)
    model_train: tuple[tuple[Str, TrainOverrides], ...] = ()  # per-model overrides, on top of ``train``
    search: SearchConfig | None = None  # set: the student's logconf knobs are searched, not fixed
    chain: tuple[Str, ...] = ()  # bootstrapping: models between weak and strong, each taught by the one before
    bootstrap_slices: NonNegInt = 0  # disjoint slices of half B for the chain's steps; 0: one per step
    finetune: FinetuneField = dataclasses.field(default_factory=Finetune)  # a mode name: both roles
    test_curves: TestCurves = 0  # GT test accuracy points per epoch of the student (analysis only; probe: every epoch)
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    generative_finetune: GenerativeFinetune | None = None  # set: the strong model is adapted to the texts first
    # every training keeps its best epoch on the validation split (students: against the weak labels, never GT)
    early_stopping: Bool = False

    def __post_init__(self) -> None:
        if self.early_stopping and not self.split.n_val:
            raise ConfigError("split.n_val", "early stopping needs validation rows held out of half B (n_val > 0)")
        if self.generative_finetune is not None and self.finetune.strong == "probe":
            raise ConfigError("generative_finetune", "adapts a fine-tuned strong model; with finetune.strong: "
                                                     "probe there is no training for it to start")
        if self.finetune.any_probe and self.chain:
            raise ConfigError("finetune", "bootstrapping chains need finetune: full (probe mode runs direct "
                                          "students and alpha searches)")
        if self.chain and self.search is not None:
            raise ConfigError("bootstrap", "a bootstrapping chain and an alpha search cannot share a cell")
        if self.search is not None and not self.split.n_val:
            raise ConfigError("split.n_val", "a search needs validation rows held out of half B (n_val > 0)")
        steps = len(self.chain) + 1
        if self.chain and self.bootstrap_slices and self.bootstrap_slices < steps:
            raise ConfigError("bootstrap.slices", f"{self.bootstrap_slices} slices cannot feed {steps} steps")

    @property
    def method(self) -> str:
        """fixed (the loss is given), search:<objective>, or bootstrap."""
        if self.chain:
            return "bootstrap"
        return f"search:{self.search.objective}" if self.search is not None else "fixed"

    def overrides_for(self, model: str) -> TrainOverrides:
        """``train`` with the model's own overrides on top (None never overrides)."""
        merged = as_dict(self.train)
        for name, ov in self.model_train:
            if name == model:
                merged.update({k: v for k, v in as_dict(ov).items() if v is not None})
        return TrainOverrides(**merged)

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for JSON and hashing)."""
    return dataclasses.asdict(obj)
