"""Experiments → a DAG of unique, content-addressed stages.

A stage is identified by its key (see :func:`w2s_ray.artifacts.stage_key`),
so two cells that need the same weak model, the same weak labels or the same
ceiling share one stage: the plan holds each key once. The role a stage plays
(weak, ceiling, student) is a label for people, never part of its key.

Stage kinds:
  ``data``  : dataset → A / B / test parquet files (driver, pyarrow)
  ``train`` : fine-tune a model on GT or weak labels (Ray Train in a Tune trial)
  ``infer`` : a trained model's P(class 1) on a split (Ray Data batch inference);
              on B these are the weak labels, on test the predictions
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from w2s_ray.artifacts import stage_key
from w2s_ray.config import ExperimentConfig, LossConfig, SplitConfig, TrainConfig, TrainOverrides
from w2s_ray.data import DatasetSpec, fingerprint, resolve_dataset
from w2s_ray.models import ModelSpec, resolve_model

DEFAULT_EPOCHS = 2
GT_LOSS = LossConfig("xent")


@dataclass(frozen=True)
class Stage:
    key: str
    kind: str
    name: str
    params: dict[str, Any] = field(compare=False, hash=False)
    inputs: dict[str, str] = field(compare=False, hash=False)

    @property
    def deps(self) -> tuple[str, ...]:
        return tuple(self.inputs.values())


def _stage(kind: str, name: str, params: dict[str, Any], inputs: dict[str, str]) -> Stage:
    return Stage(stage_key(kind, params, inputs), kind, name, params, inputs)


def data_stage(ds: DatasetSpec, split: SplitConfig) -> Stage:
    params = {"dataset": ds.name, "source": ds.source, "version": fingerprint(ds), "split": asdict(split)}
    return _stage("data", f"data {ds.name} seed {split.seed}", params, {})


def train_config(model: ModelSpec, ds: DatasetSpec, ov: TrainOverrides, seed: int) -> TrainConfig:
    """Registry defaults, then the user's overrides; the result has no None."""
    batch = ov.batch_size or model.batch_size
    return TrainConfig(
        lr=ov.lr or model.lr,
        batch_size=batch,
        minibatch_size=min(ov.minibatch_size or model.minibatch_size or batch, batch),
        epochs=ov.epochs or DEFAULT_EPOCHS,
        max_len=ov.max_len or ds.max_len,
        seed=seed,
    )


def train_stage(
    role: str, model: ModelSpec, train: TrainConfig, loss: LossConfig, data: Stage, split: str,
    labels: Stage | None = None,
) -> Stage:
    """Fine-tune on ``split``: GT labels if ``labels`` is None, else those weak labels."""
    params = {
        "model": model.effective(),
        "train": asdict(train),
        "loss": loss.effective(),
        "split": split,
        "targets": "gt" if labels is None else "weak",
    }
    inputs = {"data": data.key} | ({"labels": labels.key} if labels is not None else {})
    source = "GT" if labels is None else "weak labels"
    return _stage("train", f"{role} {model.name} on {split} ({source}, {loss.label})", params, inputs)


def infer_stage(role: str, model: Stage, data: Stage, split: str) -> Stage:
    params = {"split": split, "max_len": model.params["train"]["max_len"]}
    what = "weak labels" if split == "B" else f"predict {split}"
    return _stage("infer", f"{what} of {role} {model.params['model']['name']}", params,
                  {"model": model.key, "data": data.key})


@dataclass(frozen=True)
class Cell:
    """One experiment's stages by role; the results row is built from these."""

    config: ExperimentConfig
    data: str
    weak: str
    weak_labels: str
    weak_test: str
    ceiling: str
    ceiling_test: str
    student: str
    student_test: str


@dataclass
class Plan:
    """Unique stages (by key) in insertion order, and the cells that use them."""

    stages: dict[str, Stage] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    def add(self, stage: Stage) -> Stage:
        return self.stages.setdefault(stage.key, stage)

    def layers(self) -> list[list[Stage]]:
        """Stages grouped so every stage's inputs are in an earlier layer."""
        depth: dict[str, int] = {}
        for key, stage in self.stages.items():  # insertion order is topological
            depth[key] = 1 + max((depth[d] for d in stage.deps), default=-1)
        out: list[list[Stage]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for key, d in depth.items():
            out[d].append(self.stages[key])
        return out

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.stages.values():
            counts[s.kind] = counts.get(s.kind, 0) + 1
        return counts


def plan_experiment(cfg: ExperimentConfig, plan: Plan | None = None) -> Plan:
    """Add one cell's stages (weak → labels → student; ceiling) to ``plan``."""
    plan = plan if plan is not None else Plan()
    ds = resolve_dataset(cfg.dataset)
    weak_model = resolve_model(cfg.weak, "weak")
    strong_model = resolve_model(cfg.strong, "strong")
    seed = cfg.split.seed
    data = plan.add(data_stage(ds, cfg.split))
    strong_train = train_config(strong_model, ds, cfg.train, seed)
    weak = plan.add(train_stage("weak", weak_model, train_config(weak_model, ds, cfg.train, seed), GT_LOSS,
                                data, "A"))
    labels = plan.add(infer_stage("weak", weak, data, "B"))
    ceiling = plan.add(train_stage("ceiling", strong_model, strong_train, GT_LOSS, data, "B"))
    student = plan.add(train_stage("student", strong_model, strong_train, cfg.loss, data, "B", labels))
    tests = [plan.add(infer_stage(role, s, data, "test"))
             for role, s in (("weak", weak), ("ceiling", ceiling), ("student", student))]
    plan.cells.append(Cell(cfg, data.key, weak.key, labels.key, tests[0].key, ceiling.key, tests[1].key,
                           student.key, tests[2].key))
    return plan
