"""Experiments → a DAG of unique, content-addressed stages.

A stage is identified by its key (see :func:`w2s_ray.artifacts.stage_key`),
so two cells that need the same weak model, the same weak labels or the same
ceiling share one stage: the plan holds each key once. The role a stage plays
(weak, ceiling, student) is a label for people, never part of its key.

The stages' kinds (what each does, where it runs, what it costs) are defined
in :mod:`w2s_ray.stages`, one module per family, with the builders this
module calls; here they are only composed. A role whose finetune mode is
``probe`` fits a head on cached features instead of fine-tuning; a weak
model that is no transformer (TF-IDF, the synthetic controls) is a
``classical`` stage. With ``early_stopping`` every training keeps its best epoch on the
validation split (students against the weak labels, never GT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from w2s_ray.classical import needs_features
from w2s_ray.config import (
    ConfigError,
    ExperimentConfig,
    LoraConfig,
    LossConfig,
    SearchConfig,
    TrainConfig,
    TrainOverrides,
)
from w2s_ray.data import DatasetSpec, resolve_dataset
from w2s_ray.models import TFIDF, ModelSpec, resolve_model, supervisor_only
from w2s_ray.stages import Stage
from w2s_ray.stages.data import data_stage, rows_stage
from w2s_ray.stages.heads import probe_infer_stage, probe_stage
from w2s_ray.stages.inference import features_stage, infer_stage
from w2s_ray.stages.search import probe_search_stage, search_stage, select_stage, trial_tests_stage
from w2s_ray.stages.supervisors import classical_infer_stage, classical_stage
from w2s_ray.stages.training import SELECT_COLUMN, adapt_stage, train_stage

DEFAULT_EPOCHS = 2
GT_LOSS = LossConfig("xent")


def train_config(model: ModelSpec, ds: DatasetSpec, ov: TrainOverrides, seed: int) -> TrainConfig:
    """Registry defaults, then the user's overrides; the result has no None."""
    batch = ov.batch_size or model.batch_size
    return TrainConfig(
        lr=ov.lr or model.lr,
        batch_size=batch,
        minibatch_size=min(ov.minibatch_size or model.minibatch_size or batch, batch),
        epochs=ov.epochs or DEFAULT_EPOCHS,
        max_len=min(ov.max_len or ds.max_len, model.max_len or ds.max_len),
        weight_decay=ov.weight_decay or 0.0,
        seed=seed,
    )


def lora_config(cfg: ExperimentConfig, model: str) -> LoraConfig | None:
    """The model's LoRA settings in this experiment (``lora_r`` > 0), or None: full fine-tuning."""
    r = cfg.overrides_for(model).lora_r
    return LoraConfig(r) if r else None


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


def cell_stage_keys(cell: Cell) -> list[str]:
    """The keys of the stages a cell's row reads, in pipeline order."""
    return [getattr(cell, f) for f in Cell.__dataclass_fields__ if f != "config"]


@dataclass
class Plan:
    """Unique stages (by key) in insertion order, and the cells that use them."""

    stages: dict[str, Stage] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    def add(self, stage: Stage) -> Stage:
        return self.stages.setdefault(stage.key, stage)

    def consumers(self) -> dict[str, list[str]]:
        """Each stage's consumers (the stages that read its artifact), in plan order."""
        out: dict[str, list[str]] = {key: [] for key in self.stages}
        for key, stage in self.stages.items():
            for dep in stage.deps:
                out[dep].append(key)
        return out

    def layers(self) -> list[list[Stage]]:
        """Stages grouped so every stage's inputs are in an earlier layer.

        Trainings (and searches) go as late as their consumers allow; that keeps
        a layer's trainings alike: the ceiling (no input but the data) trains
        beside the students of its strong model, not beside the much smaller
        weak model, so side-by-side trainings finish together instead of
        leaving a core idle (benchmarks/engine_overhead.py). The critical path
        (weak -> labels -> student) is the same either way. Every other stage
        (data, inference, features, probes) goes as early as its inputs allow:
        cheap jobs, and the model an inference needs is still loaded.
        """
        consumers = self.consumers()
        depth: dict[str, int] = {}
        for key, stage in self.stages.items():  # insertion order is topological
            depth[key] = 1 + max((depth[d] for d in stage.deps), default=-1)
        last = max(depth.values(), default=-1)
        layer: dict[str, int] = {}
        for key in reversed(self.stages):  # as late as possible
            layer[key] = min((layer[c] - 1 for c in consumers[key]), default=last)
        for key, stage in self.stages.items():  # the rest as early as possible, after their (moved) inputs
            if not stage.type.late:
                layer[key] = 1 + max((layer[d] for d in stage.deps), default=-1)
        out: list[list[Stage]] = [[] for _ in range(last + 1)]
        for key in self.stages:
            out[layer[key]].append(self.stages[key])
        return [stages for stages in out if stages]

    def role_counts(self) -> dict[str, int]:
        """Unique stages per role: what a sweep really trains and labels."""
        counts: dict[str, int] = {}
        for s in self.stages.values():
            counts[s.role] = counts.get(s.role, 0) + 1
        return counts

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.stages.values():
            counts[s.kind] = counts.get(s.kind, 0) + 1
        return counts


def with_selection(stage: Stage, val_labels: Stage | None) -> Stage:
    """``stage`` keeping its best epoch on the validation split (early stopping), re-keyed.

    Targets like its training rows: weak labels of val (``val_labels``) for a
    student, GT val labels for a model trained on GT (weak, ceiling). The GT
    test set is never read.
    """
    objective = "weak" if val_labels is not None else "gt"
    select = {"objective": objective, "column": SELECT_COLUMN[objective]}
    inputs = dict(stage.inputs) | ({"val_labels": val_labels.key} if val_labels is not None else {})
    return stage.type.make(stage.name + " [early stop]", {**stage.params, "select": select}, inputs, stage.role)


@dataclass
class RoleStages:
    """How one role's model is fitted and asked for predictions, by its finetune mode.

    ``full``: Ray Train fine-tuning and Ray Data inference. ``probe``: a head on
    the model's cached frozen features (one ``features`` stage per model and
    data artifact, shared by every probe of it). The stages, and so their
    keys, are the same whichever role the other model plays in.
    """

    plan: Plan
    cfg: ExperimentConfig
    ds: DatasetSpec
    data: Stage
    model: ModelSpec
    mode: str  # full, probe, or classical (TF-IDF and the synthetic controls; weak only)
    role: str  # weak or strong: generative finetuning adapts the strong model only, as in the paper
    partner: RoleStages | None = None  # the strong side, whose features learnable flips live in
    val_labels: Stage | None = None  # early stopping: a student's weak-labelled validation rows

    @property
    def train(self) -> TrainConfig:
        return train_config(self.model, self.ds, self.cfg.overrides_for(self.model.name), self.cfg.split.seed)

    @property
    def features(self) -> Stage:
        return self.plan.add(features_stage(self.model, self.train.max_len, self.data.inputs["rows"]))

    @property
    def init(self) -> Stage | None:
        """The adapted backbone this role's trainings start from (``generative_finetune``), or None."""
        adapt = self.cfg.generative_finetune
        if adapt is None or self.role != "strong":
            return None
        return self.plan.add(adapt_stage(self.model, adapt, self.cfg.split.seed, self.data))

    def fit(self, role: str, loss: LossConfig, split: str, labels: Stage | None = None, teacher: str = "",
            test_curves: int = 0) -> Stage:
        """Train on ``split``: GT if ``labels`` is None, else those weak labels (early stopped if asked)."""
        if self.mode == "classical":
            learnable = needs_features(self.model.effective()) and self.partner is not None
            features = self.partner.features if learnable else None
            return self.plan.add(classical_stage(self.model, self.cfg.split.seed, self.data, features))
        if self.mode == "probe":  # a probe logs its GT test curve always (cheap, analysis only)
            stage = probe_stage(role, self.model, self.cfg.probe, self.cfg.split.seed, loss, self.features,
                                self.data, split, labels, teacher)
        else:
            stage = train_stage(role, self.model, self.train, loss, self.data, split, labels, teacher, test_curves,
                                lora_config(self.cfg, self.model.name),
                                bool(self.cfg.overrides_for(self.model.name).length_buckets), self.init)
        if self.cfg.early_stopping:
            stage = with_selection(stage, self.val_labels if labels is not None else None)
        return self.plan.add(stage)

    def predict(self, role: str, fitted: Stage, split: str, part: tuple[int, int] | None = None) -> Stage:
        if self.mode == "classical":
            return self.plan.add(classical_infer_stage(role, fitted, split, part))
        if self.mode == "probe":
            return self.plan.add(probe_infer_stage(role, fitted, self.features, split))
        return self.plan.add(infer_stage(role, fitted, self.data, split, part))

    def search(self, search: SearchConfig, labels: Stage, val_labels: Stage, teacher: str) -> Stage:
        if self.mode == "probe":
            return self.plan.add(probe_search_stage(self.model, self.cfg.probe, self.cfg.split.seed, search,
                                                    self.features, self.data, labels, val_labels, teacher))
        return self.plan.add(search_stage(self.model, self.train, search, self.data, labels, val_labels, teacher,
                                          lora_config(self.cfg, self.model.name), self.init))


def plan_experiment(cfg: ExperimentConfig, plan: Plan | None = None) -> Plan:
    """Add one cell's stages (weak → labels → student; ceiling) to ``plan``."""
    plan = plan if plan is not None else Plan()
    ds = resolve_dataset(cfg.dataset)
    if ds.modality == "image" and cfg.generative_finetune is not None:
        raise ConfigError("generative_finetune", f"{ds.name} is an image dataset: there is no text to model")
    weak_model = resolve_model(cfg.weak, "weak")
    strong_model = resolve_model(cfg.strong, "strong")
    for field_name, model in (("strong", strong_model), *((f"chain[{i}]", resolve_model(m)) for i, m in
                                                           enumerate(cfg.chain))):
        if supervisor_only(model.name):
            raise ConfigError(field_name, f"{model.name} only labels: it can be a weak model, not a student")
    if ds.modality == "image" and weak_model.name == TFIDF:
        raise ConfigError("weak", f"tfidf reads words; {ds.name} is an image dataset")
    rows = plan.add(rows_stage(ds, cfg.split))
    data = plan.add(data_stage(rows, cfg.split))
    weak_mode = "classical" if supervisor_only(weak_model.name) else cfg.finetune.weak
    strong_side = RoleStages(plan, cfg, ds, data, strong_model, cfg.finetune.strong, "strong")
    weak_side = RoleStages(plan, cfg, ds, data, weak_model, weak_mode, "weak", partner=strong_side)
    weak = weak_side.fit("weak", GT_LOSS, "A")
    labels = None if cfg.chain else weak_side.predict("weak", weak, "B")
    if cfg.early_stopping:
        strong_side.val_labels = weak_side.predict("weak", weak, "val")
    ceiling = strong_side.fit("ceiling", GT_LOSS, "B")
    if cfg.search is not None:
        val_labels = weak_side.predict("weak", weak, "val")
        search = strong_side.search(cfg.search, labels, val_labels, weak_model.name)
        student = plan.add(select_stage(search, plan.add(trial_tests_stage(search))))
    elif cfg.chain:
        labels, student = _plan_chain(plan, cfg, ds, weak_side, weak, strong_model, strong_side, data)
    else:
        student = strong_side.fit("student", cfg.loss, "B", labels, weak_model.name, cfg.test_curves)
    tests = [weak_side.predict("weak", weak, "test"), strong_side.predict("ceiling", ceiling, "test")]
    # a search's student is its select stage, whose artifact names the selected trial and its test predictions
    student_test = student.key if cfg.search is not None else strong_side.predict("student", student, "test").key
    plan.cells.append(Cell(cfg, data.key, weak.key, labels.key, tests[0].key, ceiling.key, tests[1].key,
                           student.key, student_test))
    return plan


def _plan_chain(plan: Plan, cfg: ExperimentConfig, ds: DatasetSpec, weak_side: RoleStages, weak: Stage,
                strong_model: ModelSpec, strong: RoleStages, data: Stage) -> tuple[Stage, Stage]:
    """Bootstrapping: weak → chain[0] → … → strong, step j trained on slice j-1 of B as labelled by step j-1.

    Every step is an ordinary keyed stage, so chains that share a prefix (and
    the same slicing) share its stages. → (first labels, last student).
    """
    mids = [resolve_model(m, f"chain[{i}]") for i, m in enumerate(cfg.chain)]
    models = [*mids, strong_model]
    slices = cfg.bootstrap_slices or len(models)
    teacher, teacher_model, first = weak, weak_side.model, None
    for j, model in enumerate(models):
        labels = weak_side.predict("weak", teacher, "B", (j, slices)) if j == 0 else \
            plan.add(infer_stage("bootstrap", teacher, data, "B", (j, slices)))
        first = first or labels
        last = j == len(models) - 1
        train = strong.train if last else train_config(model, ds, cfg.overrides_for(model.name), cfg.split.seed)
        teacher = plan.add(train_stage("student" if last else "bootstrap", model, train, cfg.loss, data, "B",
                                       labels, teacher_model.name, cfg.test_curves if last else 0,
                                       lora_config(cfg, model.name),
                                       bool(cfg.overrides_for(model.name).length_buckets),
                                       strong.init if last else None))
        teacher_model = model
    return first, teacher


def plan_experiments(configs: list[ExperimentConfig], share: bool = True) -> Plan:
    """One plan for many cells; stages they share are planned (and run) once.

    ``share=False`` gives every cell private stages (the reference code's
    pairwise runs): only the deduplication benchmark wants that.
    """
    plan = Plan()
    for i, cfg in enumerate(configs):
        if share:
            plan_experiment(cfg, plan)
        else:
            private = plan_experiment(cfg)
            keys = {k: plan.add(_isolated(s, i, private)).key for k, s in private.stages.items()}
            cell = private.cells[0]
            plan.cells.append(Cell(cfg, *(keys[k] for k in cell_stage_keys(cell))))
    return plan


def _isolated(stage: Stage, cell: int, private: Plan) -> Stage:
    """The stage re-keyed for one cell only (its inputs re-keyed alike)."""
    inputs = {k: _isolated(private.stages[v], cell, private).key for k, v in stage.inputs.items()}
    return stage.type.make(stage.name, {**stage.params, "cell": cell}, inputs, stage.role)


def naive_trainings(configs: list[ExperimentConfig]) -> int:
    """Trainings without sharing: every cell its own weak, ceiling and student (the reference code's way)."""
    return 3 * len(configs)


def check_gpu_fit(plan: Plan) -> None:
    """Refuse, before anything starts, a plan with a GPU training that its trial could not run."""
    for stage in plan.stages.values():
        need = stage.type.gpu(stage) if stage.type.gpu else None
        if need is not None and not need["fits"]:
            raise ConfigError(f"models.{stage.params['model']['name']}", f"{stage.name}: {need['refusal']}")
