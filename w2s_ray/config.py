"""Typed, validated configuration for one weak-to-strong experiment.

Every value that can change a result lives here, so the artifact keys
(see :mod:`w2s_ray.artifacts`) can be computed from these objects alone.
Validation happens before anything is started or written: a bad value raises
:class:`ConfigError` naming its field path and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

LOSS_NAMES: tuple[str, ...] = ("xent", "logconf", "product", "kl", "entropy")
ALPHA_LOSSES: tuple[str, ...] = ("logconf", "entropy")  # losses with a confidence term ramped to alpha_max


class ConfigError(ValueError):
    """A bad configuration value; ``path`` names the offending field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _check_range(path: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ConfigError(path, f"{value!r} is outside [{lo:g}, {hi:g}]")


def _check_positive(path: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(path, f"{value!r} must be a positive integer")


@dataclass(frozen=True)
class LossConfig:
    """The student's loss. ``alpha_max``/``warmup_frac`` only matter for logconf and entropy.

    ``threshold_buffer`` (logconf only): harden against a threshold over the
    last N rows' predictions instead of the optimizer batch's (tiny batches).
    """

    name: str = "xent"
    alpha_max: float = 0.5
    warmup_frac: float = 0.2
    threshold_buffer: int = 0

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ConfigError("loss", f"unknown loss {self.name!r}; allowed: {', '.join(LOSS_NAMES)}")
        _check_range("alpha_max", self.alpha_max, 0.0, 1.0)
        _check_range("warmup_frac", self.warmup_frac, 0.0, 1.0)
        if isinstance(self.threshold_buffer, bool) or not isinstance(self.threshold_buffer, int) \
                or self.threshold_buffer < 0:
            raise ConfigError("threshold_buffer", f"{self.threshold_buffer!r} must be a non-negative integer")
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


@dataclass(frozen=True)
class ProbeConfig:
    """Linear-probe training on cached features (``finetune: probe``): a head only, so cheap to sweep."""

    lr: float = 1e-2
    epochs: int = 20
    batch_size: int = 32
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            _check_positive(name, getattr(self, name))
        if not (0 < self.lr < 1):
            raise ConfigError("lr", f"{self.lr!r} is outside (0, 1)")
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)


FINETUNE_MODES: tuple[str, ...] = ("full", "probe")
TRACKERS: tuple[str, ...] = ("mlflow", "wandb", "tensorboard")


@dataclass(frozen=True)
class Finetune:
    """How each role's model learns: ``full`` (every weight) or ``probe`` (a head on cached frozen features).

    ``Finetune("full", "probe")`` is the paper's vision protocol on text: a
    fully trained weak model's soft labels supervise linear probes on a big
    model's frozen features. The strong role covers the ceiling and the student.
    """

    weak: str = "full"
    strong: str = "full"

    def __post_init__(self) -> None:
        for role in ("weak", "strong"):
            if getattr(self, role) not in FINETUNE_MODES:
                raise ConfigError(f"finetune.{role}", f"{getattr(self, role)!r} is not allowed; allowed: "
                                                      f"{', '.join(FINETUNE_MODES)}")

    @classmethod
    def of(cls, value: str | Finetune) -> Finetune:
        """``full`` / ``probe`` for both roles, or a per-role value as is."""
        if isinstance(value, Finetune):
            return value
        if value not in FINETUNE_MODES:
            raise ConfigError("finetune", f"{value!r} is not allowed; allowed: {', '.join(FINETUNE_MODES)}")
        return cls(value, value)

    @property
    def label(self) -> str:
        """full, probe, or weak=full/strong=probe (for tables)."""
        return self.weak if self.weak == self.strong else f"weak={self.weak}/strong={self.strong}"

    @property
    def any_probe(self) -> bool:
        return "probe" in (self.weak, self.strong)


@dataclass(frozen=True)
class SplitConfig:
    """Sizes of the three disjoint splits and the seed that draws A and B.

    The test set is drawn with a seed-independent salt, so every seed of a
    sweep is measured on the same GT test rows.
    """

    seed: int = 0
    n_weak: int = 1000  # half A: weak model's GT training rows
    n_strong: int = 1000  # half B: weak labels, student and ceiling training rows
    n_test: int = 2000
    n_val: int = 0  # held out of the B side for model selection (alpha search); 0: none

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"{self.seed!r} must be a non-negative integer")
        for name in ("n_weak", "n_strong", "n_test"):
            _check_positive(name, getattr(self, name))
        if isinstance(self.n_val, bool) or not isinstance(self.n_val, int) or self.n_val < 0:
            raise ConfigError("n_val", f"{self.n_val!r} must be a non-negative integer")

    def effective(self) -> dict[str, Any]:
        """Key material: ``n_val`` only when used, so runs without validation keep their keys."""
        d = dataclasses.asdict(self)
        if not self.n_val:
            del d["n_val"]
        return d


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning hyperparameters of one training stage (effective: no None)."""

    lr: float
    batch_size: int
    minibatch_size: int
    epochs: int
    max_len: int
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0.0 < self.lr < 1.0):
            raise ConfigError("lr", f"{self.lr!r} is outside (0, 1)")
        for name in ("batch_size", "minibatch_size", "epochs", "max_len"):
            _check_positive(name, getattr(self, name))
        if self.batch_size % self.minibatch_size:
            raise ConfigError(
                "minibatch_size",
                f"{self.minibatch_size} must divide batch_size {self.batch_size}",
            )
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)


@dataclass(frozen=True)
class TrainOverrides:
    """User overrides on top of the model registry's defaults (None = default)."""

    lr: float | None = None
    batch_size: int | None = None
    minibatch_size: int | None = None
    epochs: int | None = None
    max_len: int | None = None
    lora_r: int | None = None  # > 0: train low-rank adapters (peft) instead of every weight; 0: full
    length_buckets: bool | None = None  # batch rows of similar length together (less padding)


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (peft) on the backbone; the classification head still trains in full.

    ``target_modules`` None takes peft's default for the model family
    (BERT: query/value, MPNet: q/v, GPT-2: c_attn, Llama/Qwen: q_proj/v_proj).
    """

    r: int
    alpha: int | None = None  # None: 2·r
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check_positive("lora_r", self.r)
        _check_range("lora_dropout", self.dropout, 0.0, 1.0)

    def effective(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha or 2 * self.r, "dropout": self.dropout,
                "target_modules": list(self.target_modules) if self.target_modules else None}


@dataclass(frozen=True)
class Resources:
    """Where and how wide to run. Local and cluster runs differ only here.

    ``address`` None starts a local Ray cluster with ``num_cpus`` logical CPUs
    (more than the cores on purpose: trials, Train workers and Ray Data
    ingest each need a reservation, see docs/ray notes on the 2-CPU
    deadlock). ``torch_threads`` is what each worker really computes with.
    """

    address: str | None = None
    num_cpus: int | None = None
    trial_cpus: float = 0.5
    worker_cpus: float = 1.0
    num_workers: int = 1
    use_gpu: bool = False
    max_concurrent_trials: int = 2
    torch_threads: int | None = None
    max_failures: int = 1
    driver_resource: str | None = None  # a custom resource only non-spot nodes offer
    dashboard: bool = False  # a local cluster's Ray dashboard (search stages start it: they need the State API)

    def __post_init__(self) -> None:
        _check_positive("num_workers", self.num_workers)
        _check_positive("max_concurrent_trials", self.max_concurrent_trials)
        for name in ("num_cpus", "torch_threads"):  # None: sized from the machine
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        for name in ("trial_cpus", "worker_cpus"):
            if not 0 < getattr(self, name) < math.inf:  # nan and inf fail too
                raise ConfigError(name, f"{getattr(self, name)!r} must be a positive finite number")
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ConfigError("max_failures", f"{self.max_failures!r} must be >= 0, or -1 to retry forever")


OBJECTIVES = ("weak", "oracle")


@dataclass(frozen=True)
class SearchConfig:
    """An alpha search for one cell: TPE over logconf's knobs, ASHA on per-epoch validation.

    ``objective`` picks what selection sees on the validation split:
    ``weak`` = accuracy against the weak labels (no ground truth anywhere);
    ``oracle`` = GT validation accuracy, as the paper tuned (flagged in every output).
    The GT test set is never used by either.
    """

    objective: str = "weak"
    num_samples: int = 8
    max_concurrent: int = 2
    alpha_max: tuple[float, float] = (0.0, 1.0)
    warmup_frac: tuple[float, float] = (0.05, 0.5)
    lr: tuple[float, float] | None = None  # log-uniform range; None: the model's default
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError("objective", f"unknown objective {self.objective!r}; allowed: {', '.join(OBJECTIVES)}")
        for name in ("num_samples", "max_concurrent", "grace_period"):
            _check_positive(name, getattr(self, name))
        if self.reduction_factor < 2:
            raise ConfigError("reduction_factor", f"{self.reduction_factor} must be >= 2")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"{self.seed!r} must be a non-negative integer")
        for name in ("alpha_max", "warmup_frac"):
            lo, hi = getattr(self, name)
            _check_range(f"{name}[0]", lo, 0.0, 1.0)
            _check_range(f"{name}[1]", hi, lo, 1.0)
        if self.lr is not None and not (0 < self.lr[0] <= self.lr[1] < 1):
            raise ConfigError("lr", f"{list(self.lr)} must satisfy 0 < low <= high < 1")


@dataclass(frozen=True)
class ExperimentConfig:
    """One cell: a (weak, strong) pair on a dataset with a loss and a seed."""

    dataset: str
    weak: str
    strong: str
    loss: LossConfig = field(default_factory=LossConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainOverrides = field(default_factory=TrainOverrides)
    model_train: tuple[tuple[str, TrainOverrides], ...] = ()  # per-model overrides, on top of ``train``
    search: SearchConfig | None = None  # set: the student's logconf knobs are searched, not fixed
    chain: tuple[str, ...] = ()  # bootstrapping: models between weak and strong, each taught by the one before
    bootstrap_slices: int = 0  # disjoint slices of half B for the chain's steps; 0: one per step
    finetune: Finetune = field(default_factory=Finetune)  # a mode name is taken for both roles
    test_curves: int = 0  # GT test accuracy points per epoch of the student (analysis only; probe: every epoch)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "finetune", Finetune.of(self.finetune))
        if self.finetune.any_probe and self.chain:
            raise ConfigError("finetune", "bootstrapping chains need finetune: full (probe mode runs direct "
                                          "students and alpha searches)")
        if self.chain and self.search is not None:
            raise ConfigError("bootstrap", "a bootstrapping chain and an alpha search cannot share a cell")
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
