"""``train`` and ``adapt``: fine-tuning a transformer, by Ray Train inside a Ray Tune trial.

``train`` fine-tunes on GT or on weak labels (weak model, ceiling, student,
bootstrapping step, one alpha-search trial); ``adapt`` is generative
finetuning (``generative_finetune``): the strong model trained as a language
model on the texts of A and B, no labels, that its ceiling and students start
from. Both take a training slot and their share of the cores, and sit as
late in the plan as their consumers allow (see :meth:`Plan.layers`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from w2s_ray.config import GenerativeFinetune, LoraConfig, LossConfig, Resources, TrainConfig
from w2s_ray.models import ModelSpec
from w2s_ray.stages.base import Meta, Stage, StageContext, StageKind, register

SELECT_COLUMN = {"weak": "p1", "oracle": "label", "gt": "label"}  # gt: early stopping of a GT-trained model


@dataclass(frozen=True)
class TrainParams:
    model: dict[str, Any]
    train: dict[str, Any]
    loss: dict[str, Any]
    split: str
    targets: str  # gt or weak
    lora: dict[str, Any] | None = None  # the keys below are only in a stage's params when set
    length_buckets: bool | None = None
    monitor: str | None = None  # "gt_test": log GT test accuracy (analysis only)
    monitor_points: int | None = None
    select: dict[str, str] | None = None  # early stopping: the objective and column of the validation split
    cell: int | None = None


@dataclass(frozen=True)
class AdaptParams:
    model: dict[str, Any]
    adapt: dict[str, Any]
    seed: int
    splits: list[str]
    cell: int | None = None


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
    return TRAIN.make(f"{role} {model.name} on {where} ({source}, {loss.label}{how})", params, inputs, role)


def adapt_stage(model: ModelSpec, adapt: GenerativeFinetune, seed: int, data: Stage) -> Stage:
    """Generative finetuning of ``model`` on the texts of the training halves (see :mod:`w2s_ray.adapt`).

    Keyed by model, data (the texts), hyperparameters and seed: one adaptation
    serves the ceiling and every student of that model, whatever the loss,
    alpha or weak model.
    """
    params = {"model": model.effective(), "adapt": asdict(adapt), "seed": seed, "splits": ["A", "B"]}
    return ADAPT.make(f"adapt {model.name} to the texts of A+B ({adapt.label})", params, {"data": data.key},
                      "adapt")


def run_training(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.train import fit_train_stage

    return fit_train_stage(stage, ctx.store, ctx.resources, ctx.storage_path, ctx.threads)


def run_adaptation(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.adapt import fit_adapt_stage

    return fit_adapt_stage(stage, ctx.store, ctx.resources, ctx.storage_path, ctx.threads)


def training_slot(stage: Stage, threads: int, resources: Resources) -> dict[str, float]:
    return {"trainings": 1, "cores": threads}


def training_cost(stage: Stage, rows: dict[str, int], model: dict[str, Any] | None) -> float:
    """``6·P·tokens``: the rows of its split x max_len x epochs (a search multiplies by its trials)."""
    from w2s_ray.presets import compute_params_m

    p = stage.params
    t = p["train"]
    trials = p["search"]["num_samples"] if "search" in p else 1
    return 6 * compute_params_m(p["model"]) * rows.get(p["split"], 0) * t["max_len"] * t["epochs"] / 1e6 * trials


def adaptation_cost(stage: Stage, rows: dict[str, int], model: dict[str, Any] | None) -> float:
    """A language model's ``6·P·tokens`` over the texts of every split it reads."""
    from w2s_ray.presets import compute_params_m

    p = stage.params
    tokens = sum(rows.get(s, 0) for s in p["splits"]) * p["adapt"]["max_len"] * p["adapt"]["epochs"]
    return 6 * compute_params_m(p["model"]) * tokens / 1e6


def training_gpus(stage: Stage) -> dict[str, Any] | None:
    """The GPUs one trial needs (presets.trial_resources); None for a model of unknown size."""
    from w2s_ray.models import resolve_model
    from w2s_ray.presets import trial_resources

    model = stage.params["model"]
    if not model["source"].startswith("hub:"):
        return None
    t = stage.params["train"]
    return trial_resources(resolve_model(model["name"]), minibatch_size=t["minibatch_size"],
                           max_len=t["max_len"], lora=bool(stage.params.get("lora")))


def adaptation_gpus(stage: Stage) -> dict[str, Any] | None:
    """A language model's step holds its batch at once, with no LoRA."""
    from w2s_ray.models import resolve_model
    from w2s_ray.presets import trial_resources

    model, a = stage.params["model"], stage.params["adapt"]
    if not model["source"].startswith("hub:"):
        return None
    return trial_resources(resolve_model(model["name"]), minibatch_size=a["batch_size"], max_len=a["max_len"])


def trained(stage: Stage, meta: Meta) -> str:
    return "trained" + (f", best epoch {meta['selected_epoch']}" if meta.get("selected_epoch") else "")


def adapted(stage: Stage, meta: Meta) -> str:
    return "adapted"  # a trial reports only that it committed (its LM losses are in the artifact's history)


TRAIN = register(StageKind(
    "train", "fine-tune a model on GT or weak labels (Ray Train in a Tune trial)", TrainParams, run_training,
    trained, where="trial", threads="shared", request=training_slot, cost=training_cost, late=True, learns=True,
    training=lambda s: s.params["train"], gpu=training_gpus))
ADAPT = register(StageKind(
    "adapt", "generative finetuning on the texts of A and B (Ray Train in a Tune trial)", AdaptParams,
    run_adaptation, adapted, where="trial", threads="shared", request=training_slot, cost=adaptation_cost,
    late=True, learns=True, training=lambda s: s.params["adapt"], gpu=adaptation_gpus))
