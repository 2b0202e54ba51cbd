"""``infer`` and ``features``: Ray Data batch inference, each job in a driver thread.

``infer`` is a fine-tuned model's P(class 1) on a split (on B these are the
weak labels, on test the predictions); ``features`` a frozen pretrained
backbone's pooled features of every row of a rows artifact, once per model
and rows (not per seed), that probes and learnable flips read. A job drives
its streaming execution from the driver, as Ray's batch-inference examples
do, and takes one of the ``jobs`` slots and every core it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from w2s_ray.config import Resources
from w2s_ray.models import ModelSpec
from w2s_ray.stages.base import Meta, Stage, StageContext, StageKind, register
from w2s_ray.stages.data import counted

INFER_ROLES = {"B": ("weak labels", "labels"), "val": ("validation weak labels", "val labels")}


def prediction_names(role: str, split: str) -> tuple[str, str]:
    """(what a prediction stage makes, its role): weak labels on B and val, predictions elsewhere."""
    return INFER_ROLES.get(split, (f"predict {split}", f"{role} predictions"))


@dataclass(frozen=True)
class InferParams:
    split: str
    max_len: int
    slice: list[int] | None = None  # (i, n): bootstrapping's slice i of n
    cell: int | None = None


@dataclass(frozen=True)
class FeaturesParams:
    model: dict[str, Any]
    max_len: int
    cell: int | None = None


def infer_stage(role: str, model: Stage, data: Stage | str, split: str,
                part: tuple[int, int] | None = None) -> Stage:
    """P(class 1) of ``model`` on ``split``; ``part = (i, n)`` keeps only slice i of n (bootstrapping)."""
    params: dict[str, Any] = {"split": split, "max_len": model.params["train"]["max_len"]}
    what, stage_role = prediction_names(role, split)
    if part is not None:
        params["slice"] = list(part)
        what = f"{what} (slice {part[0] + 1}/{part[1]})"
    data_key = data if isinstance(data, str) else data.key
    return INFER.make(f"{what} of {role} {model.params['model']['name']}", params,
                      {"model": model.key, "data": data_key}, stage_role)


def features_stage(model: ModelSpec, max_len: int, rows: str) -> Stage:
    """Frozen pretrained features of a rows artifact: shared by every probe of this model on these rows,
    whatever the seed."""
    params = {"model": model.effective(), "max_len": max_len}
    return FEATURES.make(f"features of {model.name}", params, {"rows": rows}, "features")


def run_inference(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.label import run_infer_stage

    return run_infer_stage(stage, ctx.store, actors=1, threads=ctx.threads, use_gpu=ctx.resources.use_gpu)


def run_features(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.probe import run_features_stage

    return run_features_stage(stage, ctx.store, threads=ctx.threads, use_gpu=ctx.resources.use_gpu)


def job_slot(stage: Stage, threads: int, resources: Resources) -> dict[str, float]:
    return {"jobs": 1, "cores": threads}


def inference_cost(stage: Stage, rows: dict[str, int], model: dict[str, Any] | None) -> float:
    """``2·P·tokens`` of the model it runs over its split."""
    from w2s_ray.presets import compute_params_m

    return 2 * compute_params_m(model or {}) * rows.get(stage.params["split"], 0) * stage.params["max_len"] / 1e6


def features_cost(stage: Stage, rows: dict[str, int], model: dict[str, Any] | None) -> float:
    """``2·P·tokens`` over every row of its rows artifact."""
    from w2s_ray.presets import compute_params_m

    return 2 * compute_params_m(stage.params["model"]) * sum(rows.values()) * stage.params["max_len"] / 1e6


def prewarm(resources: Resources) -> None:
    """On a local CPU run, start the pooled worker the inference tasks will use (imports done).

    Only locally: on a cluster the job's tasks may land on any node, and
    fixed seconds matter little against GPU training.
    """
    if resources.local_cpu:
        from w2s_ray.label import prewarm_worker

        prewarm_worker()


INFER = register(StageKind(
    "infer", "a fine-tuned model's P(class 1) on a split (Ray Data batch inference)", InferParams, run_inference,
    counted, request=job_slot, cost=inference_cost, prepare=prewarm))
FEATURES = register(StageKind(
    "features", "a frozen backbone's pooled features of every row (Ray Data batch inference)", FeaturesParams,
    run_features, lambda s, m: counted(s, m) + " cached", request=job_slot, cost=features_cost))
