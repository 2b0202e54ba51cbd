"""``classical`` and ``classicalinfer``: a supervisor that is no transformer, and its predictions.

TF-IDF logistic regression and the synthetic controls (random and learnable
flips; see :mod:`w2s_ray.classical`), fitted on half A. Seconds of
scikit-learn or numpy each: a Ray task reserving one CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from w2s_ray.models import ModelSpec
from w2s_ray.stages.base import Meta, Stage, StageContext, StageKind, cores_request, register
from w2s_ray.stages.data import counted
from w2s_ray.stages.inference import INFER_ROLES, prediction_names


@dataclass(frozen=True)
class ClassicalParams:
    model: dict[str, Any]
    seed: int
    split: str
    targets: str
    cell: int | None = None


@dataclass(frozen=True)
class ClassicalInferParams:
    split: str
    text: bool | None = None
    slice: list[int] | None = None
    cell: int | None = None


def classical_stage(model: ModelSpec, seed: int, data: Stage, features: Stage | None) -> Stage:
    """A supervisor that is no transformer (:mod:`w2s_ray.classical`), fitted on half A.

    ``features``: the strong model's frozen features (learnable flips live in them).
    """
    params = {"model": model.effective(), "seed": seed, "split": "A", "targets": "gt"}
    inputs = {"data": data.key} | ({"features": features.key} if features is not None else {})
    return CLASSICAL.make(f"weak {model.name} on A (GT)", params, inputs, "weak")


def classical_infer_stage(role: str, fitted: Stage, split: str, part: tuple[int, int] | None = None) -> Stage:
    """A classical supervisor's P(class 1) on ``split`` (``part``: one bootstrapping slice of it)."""
    what, stage_role = prediction_names(role, split)
    params: dict[str, Any] = {"split": split} | ({"text": True} if split in INFER_ROLES else {})
    if part is not None:
        params["slice"] = list(part)
        what = f"{what} (slice {part[0] + 1}/{part[1]})"
    return CLASSICALINFER.make(f"{what} of {role} {fitted.params['model']['name']}", params,
                               {"model": fitted.key, **fitted.inputs}, stage_role)


def run_fit(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.classical import run_classical_stage

    return run_classical_stage(stage, ctx.store_uri)


def run_predictions(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.classical import run_classical_infer_stage

    return run_classical_infer_stage(stage, ctx.store_uri)


def fitted(stage: Stage, meta: Meta) -> str:
    if "reached_rate" in meta:
        return f"fitted: disagrees with GT on {meta['reached_rate']:.3f} of A (asked {meta['rate']:g})"
    return f"fitted on {meta['rows']} rows" + (f", {meta['terms']} terms" if "terms" in meta else "")


CLASSICAL = register(StageKind(
    "classical", "a TF-IDF or synthetic supervisor fitted on A (a Ray task, one CPU)", ClassicalParams, run_fit,
    fitted, where="task", task_cpus=1, threads="one", request=cores_request))
CLASSICALINFER = register(StageKind(
    "classicalinfer", "a classical supervisor's P(class 1) on a split (a Ray task, one CPU)", ClassicalInferParams,
    run_predictions, counted, where="task", task_cpus=1, threads="one", request=cores_request))
