"""Experiments → a DAG of unique, content-addressed stages.

A stage is identified by its key (see :func:`w2s_ray.artifacts.stage_key`),
so two cells that need the same weak model, the same weak labels or the same
ceiling share one stage: the plan holds each key once. The role a stage plays
(weak, ceiling, student) is a label for people, never part of its key.

Stage kinds:
  ``rows``  : dataset → its test rows and the pool every seed deals A / B / val from
  ``data``  : rows → one seed's A / B / test (/ val) parquet files (driver, pyarrow)
  ``train`` : fine-tune a model on GT or weak labels (Ray Train in a Tune trial)
  ``infer`` : a trained model's P(class 1) on a split (Ray Data batch inference);
              on B these are the weak labels, on test the predictions
  ``adapt`` : generative finetuning (``generative_finetune``): the strong model
              trained as a language model on the texts of A and B, no labels;
              its ceiling and students start from it (Ray Train in a Tune trial)

A role whose finetune mode is ``probe`` (``finetune: probe``, or per role:
``finetune: {weak: full, strong: probe}``) swaps the last two for:
  ``features``    : a frozen pretrained backbone's pooled features for every row
                    (Ray Data batch inference), once per model and rows artifact (not per seed)
  ``probe``       : a linear head trained on cached features (a Ray task)
  ``probeinfer`` : a head's P(class 1) on a split's features (a Ray task)

A weak model that is no transformer (TF-IDF, the synthetic controls: see
:mod:`w2s_ray.classical`) is a ``classical`` stage fitted on A and
``classicalinfer`` stages for its labels and test predictions (Ray tasks).
With ``early_stopping`` every training keeps its best epoch on the
validation split (students against the weak labels, never GT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from w2s_ray.artifacts import stage_key
from w2s_ray.classical import needs_features
from w2s_ray.config import (
    ConfigError,
    ExperimentConfig,
    GenerativeFinetune,
    LoraConfig,
    LossConfig,
    ProbeConfig,
    SearchConfig,
    SplitConfig,
    TrainConfig,
    TrainOverrides,
)
from w2s_ray.data import DatasetSpec, fingerprint, resolve_dataset
from w2s_ray.models import TFIDF, ModelSpec, resolve_model, supervisor_only

DEFAULT_EPOCHS = 2
GT_LOSS = LossConfig("xent")


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


def _stage(kind: str, name: str, params: dict[str, Any], inputs: dict[str, str], role: str) -> Stage:
    return Stage(stage_key(kind, params, inputs), kind, name, params, inputs, role)


def rows_stage(ds: DatasetSpec, split: SplitConfig) -> Stage:
    """The dataset's test rows and the pool A, B and val are dealt from: the same for every seed."""
    sizes = {k: v for k, v in split.effective().items() if k != "seed"}
    params = {"dataset": ds.name, "source": ds.source, "version": fingerprint(ds), "sizes": sizes}
    return _stage("rows", f"rows of {ds.name}", params, {}, "rows")


def data_stage(rows: Stage, split: SplitConfig) -> Stage:
    """A / B / test (/ val) for one seed, dealt from ``rows``."""
    return _stage("data", f"data {rows.params['dataset']} seed {split.seed}", {"split": split.effective()},
                  {"rows": rows.key}, "data")


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


def adapt_stage(model: ModelSpec, adapt: GenerativeFinetune, seed: int, data: Stage) -> Stage:
    """Generative finetuning of ``model`` on the texts of the training halves (see :mod:`w2s_ray.adapt`).

    Keyed by model, data (the texts), hyperparameters and seed: one adaptation
    serves the ceiling and every student of that model, whatever the loss,
    alpha or weak model.
    """
    params = {"model": model.effective(), "adapt": asdict(adapt), "seed": seed, "splits": ["A", "B"]}
    return _stage("adapt", f"adapt {model.name} to the texts of A+B ({adapt.label})", params, {"data": data.key},
                  "adapt")


def train_stage(
    role: str, model: ModelSpec, train: TrainConfig, loss: LossConfig, data: Stage, split: str,
    labels: Stage | None = None, teacher: str = "", test_curves: int = 0, lora: LoraConfig | None = None,
    buckets: bool = False, init: Stage | None = None,
) -> Stage:
    """Fine-tune on ``split``: GT labels if ``labels`` is None, else those weak labels.

    ``test_curves``: also log GT test accuracy that many times per epoch
    (analysis only; nothing selects on it). ``init``: an ``adapt`` stage whose
    backbone replaces the pretrained one. Each is only in the key when set,
    so other keys never change.
    """
    params = {
        "model": model.effective(),
        "train": asdict(train),
        "loss": loss.effective(),
        "split": split,
        "targets": "gt" if labels is None else "weak",
    }
    if lora is not None:  # only when set, so full fine-tuning keys never change
        params["lora"] = lora.effective()
    if buckets:  # likewise
        params["length_buckets"] = True
    if test_curves:
        params["monitor"] = "gt_test"
        if test_curves > 1:
            params["monitor_points"] = int(test_curves)
    inputs = {"data": data.key} | ({"labels": labels.key} if labels is not None else {}) \
        | ({"init": init.key} if init is not None else {})
    source = "GT" if labels is None else f"labels of {teacher or 'weak'}"
    part = labels.params.get("slice") if labels is not None else None
    where = f"{split} slice {part[0] + 1}/{part[1]}" if part else split
    how = (f", LoRA r={lora.r}" if lora is not None else "") + (", adapted" if init is not None else "")
    return _stage("train", f"{role} {model.name} on {where} ({source}, {loss.label}{how})", params, inputs, role)


def lora_config(cfg: ExperimentConfig, model: str) -> LoraConfig | None:
    """The model's LoRA settings in this experiment (``lora_r`` > 0), or None: full fine-tuning."""
    r = cfg.overrides_for(model).lora_r
    return LoraConfig(r) if r else None


INFER_ROLES = {"B": ("weak labels", "labels"), "val": ("validation weak labels", "val labels")}


def infer_stage(role: str, model: Stage, data: Stage | str, split: str,
                part: tuple[int, int] | None = None) -> Stage:
    """P(class 1) of ``model`` on ``split``; ``part = (i, n)`` keeps only slice i of n (bootstrapping)."""
    params = {"split": split, "max_len": model.params["train"]["max_len"]}
    what, stage_role = INFER_ROLES.get(split, (f"predict {split}", f"{role} predictions"))
    if part is not None:
        params["slice"] = list(part)
        what = f"{what} (slice {part[0] + 1}/{part[1]})"
    data_key = data if isinstance(data, str) else data.key
    return _stage("infer", f"{what} of {role} {model.params['model']['name']}", params,
                  {"model": model.key, "data": data_key}, stage_role)


SELECT_COLUMN = {"weak": "p1", "oracle": "label", "gt": "label"}  # gt: early stopping of a GT-trained model


def search_stage(model: ModelSpec, train: TrainConfig, search: SearchConfig, data: Stage, labels: Stage,
                 val_labels: Stage, teacher: str, lora: LoraConfig | None = None, init: Stage | None = None) -> Stage:
    """An alpha search for one (weak, strong) cell: many logconf students, one selected on validation.

    Its trials inherit its inputs, so with ``init`` every trial starts from the adapted backbone.
    """
    params = {"model": model.effective(), "train": asdict(train), "loss": {"name": "logconf"}, "split": "B",
              "targets": "weak", "search": asdict(search)}
    if lora is not None:
        params["lora"] = lora.effective()
    inputs = {"data": data.key, "labels": labels.key, "val_labels": val_labels.key} \
        | ({"init": init.key} if init is not None else {})
    return _stage("search", f"alpha search {model.name} on labels of {teacher} (objective {search.objective})",
                  params, inputs, "search")


def probe_search_stage(model: ModelSpec, probe: ProbeConfig, seed: int, search: SearchConfig, features: Stage,
                       data: Stage, labels: Stage, val_labels: Stage, teacher: str) -> Stage:
    """Probe mode's alpha search: every trial is a head on the strong model's cached features."""
    params = {"model": model.effective(), "probe": asdict(probe), "seed": seed, "loss": {"name": "logconf"},
              "split": "B", "targets": "weak", "search": asdict(search), "finetune": "probe"}
    inputs = {"features": features.key, "data": data.key, "labels": labels.key, "val_labels": val_labels.key}
    return _stage("search", f"alpha search (probe) {model.name} on labels of {teacher} (objective "
                            f"{search.objective})", params, inputs, "search")


def search_epochs(stage: Stage) -> int:
    """Epochs of one trial of a search (or of a trial stage): the head's in probe mode."""
    return stage.params["probe"]["epochs"] if "probe" in stage.params else stage.params["train"]["epochs"]


def search_trial_stage(search: Stage, alpha_max: float, warmup_frac: float, lr: float | None) -> Stage:
    """One trial of a search as an ordinary train (or probe) stage: its own key, never retrained once committed."""
    p = search.params
    loss = LossConfig("logconf", round(alpha_max, 4), round(warmup_frac, 4))
    objective = p["search"]["objective"]
    select = {"objective": objective, "column": SELECT_COLUMN[objective]}
    if p.get("finetune") == "probe":
        probe = dict(p["probe"], **({"lr": round(lr, 8)} if lr is not None else {}))
        params = {"model": p["model"], "probe": probe, "seed": p["seed"], "loss": loss.effective(), "split": "B",
                  "targets": "weak", "select": select}
        name = (f"trial (probe) {p['model']['name']} a={loss.alpha_max:g} w={loss.warmup_frac:g}"
                + (f" lr={probe['lr']:.2g}" if lr is not None else "") + f" ({objective})")
        return _stage("probe", name, params, dict(search.inputs), "search trial")
    train = dict(p["train"], **({"lr": round(lr, 8)} if lr is not None else {}))
    params = {"model": p["model"], "train": train, "loss": loss.effective(), "split": "B", "targets": "weak",
              "select": select} | ({"lora": p["lora"]} if "lora" in p else {})
    name = (f"trial {p['model']['name']} a={loss.alpha_max:g} w={loss.warmup_frac:g}"
            + (f" lr={train['lr']:.2g}" if lr is not None else "") + f" ({objective})")
    return _stage("train", name, params, dict(search.inputs), "search trial")


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


TRAINING_KINDS = ("train", "adapt")  # stages that fine-tune a model in a Tune trial (Ray Train)
LATE_KINDS = (*TRAINING_KINDS, "search")  # see Plan.layers


@dataclass
class Plan:
    """Unique stages (by key) in insertion order, and the cells that use them."""

    stages: dict[str, Stage] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    def add(self, stage: Stage) -> Stage:
        return self.stages.setdefault(stage.key, stage)

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
        consumers: dict[str, list[str]] = {key: [] for key in self.stages}
        for key, stage in self.stages.items():
            for dep in stage.deps:
                consumers[dep].append(key)
        depth: dict[str, int] = {}
        for key, stage in self.stages.items():  # insertion order is topological
            depth[key] = 1 + max((depth[d] for d in stage.deps), default=-1)
        last = max(depth.values(), default=-1)
        layer: dict[str, int] = {}
        for key in reversed(self.stages):  # as late as possible
            layer[key] = min((layer[c] - 1 for c in consumers[key]), default=last)
        for key, stage in self.stages.items():  # the rest as early as possible, after their (moved) inputs
            if stage.kind not in LATE_KINDS:
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


def features_stage(model: ModelSpec, max_len: int, rows: str) -> Stage:
    """Frozen pretrained features of a rows artifact: shared by every probe of this model on these rows,
    whatever the seed."""
    params = {"model": model.effective(), "max_len": max_len}
    return _stage("features", f"features of {model.name}", params, {"rows": rows}, "features")


def probe_stage(role: str, model: ModelSpec, probe: ProbeConfig, seed: int, loss: LossConfig, features: Stage,
                data: Stage, split: str, labels: Stage | None = None, teacher: str = "") -> Stage:
    """A linear head on ``features`` of ``split``: GT targets if ``labels`` is None, else those weak labels."""
    params = {"model": model.effective(), "probe": asdict(probe), "seed": seed, "loss": loss.effective(),
              "split": split, "targets": "gt" if labels is None else "weak"}
    inputs = {"features": features.key, "data": data.key} | ({"labels": labels.key} if labels else {})
    source = "GT" if labels is None else f"labels of {teacher or 'weak'}"
    return _stage("probe", f"{role} probe {model.name} on {split} ({source}, {loss.label})", params, inputs, role)


def probe_infer_stage(role: str, head: Stage, features: Stage, split: str) -> Stage:
    """A head's P(class 1) on ``split``; labels (B, val) keep each row's text, as a fine-tuned student reads it."""
    what, stage_role = INFER_ROLES.get(split, (f"predict {split}", f"{role} predictions"))
    params = {"split": split} | ({"text": True} if split in INFER_ROLES else {})
    return _stage("probeinfer", f"{what} of {role} probe {head.params['model']['name']}", params,
                  {"model": head.key, "features": features.key}, stage_role)


def classical_stage(model: ModelSpec, seed: int, data: Stage, features: Stage | None) -> Stage:
    """A supervisor that is no transformer (:mod:`w2s_ray.classical`), fitted on half A.

    ``features``: the strong model's frozen features (learnable flips live in them).
    """
    params = {"model": model.effective(), "seed": seed, "split": "A", "targets": "gt"}
    inputs = {"data": data.key} | ({"features": features.key} if features is not None else {})
    return _stage("classical", f"weak {model.name} on A (GT)", params, inputs, "weak")


def classical_infer_stage(role: str, fitted: Stage, split: str, part: tuple[int, int] | None = None) -> Stage:
    """A classical supervisor's P(class 1) on ``split`` (``part``: one bootstrapping slice of it)."""
    what, stage_role = INFER_ROLES.get(split, (f"predict {split}", f"{role} predictions"))
    params: dict[str, Any] = {"split": split} | ({"text": True} if split in INFER_ROLES else {})
    if part is not None:
        params["slice"] = list(part)
        what = f"{what} (slice {part[0] + 1}/{part[1]})"
    return _stage("classicalinfer", f"{what} of {role} {fitted.params['model']['name']}", params,
                  {"model": fitted.key, **fitted.inputs}, stage_role)


def with_selection(stage: Stage, val_labels: Stage | None) -> Stage:
    """``stage`` keeping its best epoch on the validation split (early stopping), re-keyed.

    Targets like its training rows: weak labels of val (``val_labels``) for a
    student, GT val labels for a model trained on GT (weak, ceiling). The GT
    test set is never read.
    """
    objective = "weak" if val_labels is not None else "gt"
    select = {"objective": objective, "column": SELECT_COLUMN[objective]}
    inputs = dict(stage.inputs) | ({"val_labels": val_labels.key} if val_labels is not None else {})
    return _stage(stage.kind, stage.name + " [early stop]", {**stage.params, "select": select}, inputs, stage.role)


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
        if not cfg.split.n_val:
            raise ConfigError("split.n_val", "an alpha search needs a validation split (n_val > 0)")
        val_labels = weak_side.predict("weak", weak, "val")
        student = strong_side.search(cfg.search, labels, val_labels, weak_model.name)
    elif cfg.chain:
        labels, student = _plan_chain(plan, cfg, ds, weak_side, weak, strong_model, strong_side, data)
    else:
        student = strong_side.fit("student", cfg.loss, "B", labels, weak_model.name, cfg.test_curves)
    tests = [weak_side.predict("weak", weak, "test"), strong_side.predict("ceiling", ceiling, "test")]
    # a search's selected student is only known once it ran: its test predictions are part of its artifact
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
    return _stage(stage.kind, stage.name, {**stage.params, "cell": cell}, inputs, stage.role)


def naive_trainings(configs: list[ExperimentConfig]) -> int:
    """Trainings without sharing: every cell its own weak, ceiling and student (the reference code's way)."""
    return 3 * len(configs)


def gpu_need(stage: Stage) -> dict[str, Any] | None:
    """The GPUs one trial of a training stage needs (presets.trial_resources), None for a model of unknown size."""
    from w2s_ray.presets import trial_resources

    model = stage.params["model"]
    if not model["source"].startswith("hub:"):
        return None
    if stage.kind == "adapt":  # a language model's step: its batch at once, no LoRA
        a = stage.params["adapt"]
        return trial_resources(resolve_model(model["name"]), minibatch_size=a["batch_size"], max_len=a["max_len"])
    return trial_resources(resolve_model(model["name"]), minibatch_size=stage.params["train"]["minibatch_size"],
                           max_len=stage.params["train"]["max_len"], lora=bool(stage.params.get("lora")))


def check_gpu_fit(plan: Plan) -> None:
    """Refuse, before anything starts, a plan with a GPU training that its trial could not run."""
    for stage in plan.stages.values():
        need = gpu_need(stage) if stage.kind in LATE_KINDS else None
        if need is not None and not need["fits"]:
            raise ConfigError(f"models.{stage.params['model']['name']}", f"{stage.name}: {need['refusal']}")


def trial_request(stage: Stage, use_gpu: bool, num_workers: int, worker_cpus: float) -> str:
    """What one training trial of ``stage`` asks the cluster for, in words."""
    if not use_gpu:
        return f"{num_workers} worker(s) x {worker_cpus:g} CPU"

    need = gpu_need(stage)
    if need is None:
        return f"{num_workers} worker(s) x 1 GPU"
    if not need["fits"]:
        return "does not fit one node"
    gb = f", ~{need['per_gpu_gb']:g} GB/GPU" if need["per_gpu_gb"] is not None else ""
    extras = ", grad checkpointing" if need["gradient_checkpointing"] else ""
    return f"{need['gpus_per_trial']} GPU ({need['strategy']}{gb}{extras})"


def describe_plan(spec: Any, plan: Plan) -> str:
    """``w2s-ray plan``: the unique stages per role, what each training asks for, and the cells."""
    r = spec.resources
    counts = plan.role_counts()
    trainings = sum(v for k, v in counts.items() if k in ("weak", "ceiling", "student", "bootstrap", "adapt"))
    searches = [s for s in plan.stages.values() if s.kind == "search"]
    budget = sum(s.params["search"]["num_samples"] for s in searches)
    variants = len(spec.loss_configs()) + (len(spec.search.objectives) if spec.search else 0)
    grid = (f"{len(spec.datasets)} dataset(s) x {len(spec.seeds)} seed(s) x {len(spec.pair_list())} pair(s) x "
            f"{variants} loss variant(s)" + (f" + {len(spec.chain_list())} bootstrap chain(s) x "
                                             f"{len(spec.loss_configs())} loss(es)" if spec.chain_list() else ""))
    if spec.parts:
        grid = f"the union of {len(spec.parts)} part(s)"
    lines = [
        f"sweep {spec.name}: {grid} = {len(plan.cells)} cells",
        "unique stages: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        f"trainings: {trainings}" + (f" + up to {budget} search trial(s) in {len(searches)} search(es)"
                                     if searches else "")
        + f" (without sharing stages: {naive_trainings([c.config for c in plan.cells])})",
        f"resources: profile {r.profile}, max {r.max_concurrent_trials} concurrent trial(s), "
        f"{r.num_workers} Train worker(s) per trial, storage {r.storage or '(local: --out)'}",
    ]
    if any(s.kind in TRAINING_KINDS for s in plan.stages.values()):
        lines += ["", "trainings (stage, epochs, max_len, per-trial request, key):"]
    probes = [s for s in plan.stages.values() if s.kind == "probe"]
    if probes:
        device = "1 GPU" if r.use_gpu else "1 CPU"
        lines.append(f"probe mode: {len(probes)} linear head(s) on the cached features of "
                     f"{sum(s.kind == 'features' for s in plan.stages.values())} backbone(s); each features job "
                     f"asks for {device} (a Ray Data actor), each head for 1 CPU (a Ray task)")
    width = max((len(s.name) for s in plan.stages.values() if s.kind in TRAINING_KINDS), default=0)
    for s in plan.stages.values():
        if s.kind in TRAINING_KINDS:
            t = s.params["train" if s.kind == "train" else "adapt"]
            lines.append(f"  {s.name:{width}} epochs {t['epochs']} max_len {t['max_len']:<5} "
                         f"{trial_request(s, r.use_gpu, r.num_workers, r.worker_cpus)}  [{s.key}]")
    lines += ["", "cells (dataset, seed, weak -> strong, loss):"]
    for i, c in enumerate(plan.cells, 1):
        cfg = c.config
        via = "".join(f" -> {m}" for m in cfg.chain)
        loss = f"logconf, alpha searched ({cfg.search.objective} objective)" if cfg.search else cfg.loss.label
        lines.append(f"  {i:3}. {cfg.dataset} seed {cfg.split.seed}: {cfg.weak}{via} -> {cfg.strong}, {loss}"
                     + (" (bootstrap)" if cfg.chain else "")
                     + (f" [finetune {cfg.finetune.label}]" if cfg.finetune.any_probe else ""))
    return "\n".join(lines)
