"""``probe`` and ``probeinfer``: a linear head on a backbone's cached features, and its predictions.

Probe mode's fitting and predicting (``finetune: probe``): seconds of one
thread each, so a Ray task reserving one CPU, many side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from w2s_ray.config import LossConfig, ProbeConfig
from w2s_ray.models import ModelSpec
from w2s_ray.stages.base import Meta, Stage, StageContext, StageKind, cores_request, register
from w2s_ray.stages.data import counted
from w2s_ray.stages.inference import INFER_ROLES, prediction_names


@dataclass(frozen=True)
class ProbeParams:
    model: dict[str, Any]
    probe: dict[str, Any]
    seed: int
    loss: dict[str, Any]
    split: str
    targets: str  # gt or weak
    select: dict[str, str] | None = None  # early stopping (see plan.with_selection)
    cell: int | None = None


@dataclass(frozen=True)
class ProbeInferParams:
    split: str
    text: bool | None = None  # keep each row's text (labels: a fine-tuned student reads it)
    cell: int | None = None


def probe_stage(role: str, model: ModelSpec, probe: ProbeConfig, seed: int, loss: LossConfig, features: Stage,
                data: Stage, split: str, labels: Stage | None = None, teacher: str = "") -> Stage:
    """A linear head on ``features`` of ``split``: GT targets if ``labels`` is None, else those weak labels."""
    params = {"model": model.effective(), "probe": asdict(probe), "seed": seed, "loss": loss.effective(),
              "split": split, "targets": "gt" if labels is None else "weak"}
    inputs = {"features": features.key, "data": data.key} | ({"labels": labels.key} if labels else {})
    source = "GT" if labels is None else f"labels of {teacher or 'weak'}"
    return PROBE.make(f"{role} probe {model.name} on {split} ({source}, {loss.label})", params, inputs, role)


def probe_infer_stage(role: str, head: Stage, features: Stage | str, split: str) -> Stage:
    """A head's P(class 1) on ``split``; labels (B, val) keep each row's text, as a fine-tuned student reads it."""
    what, stage_role = prediction_names(role, split)
    params = {"split": split} | ({"text": True} if split in INFER_ROLES else {})
    features_key = features if isinstance(features, str) else features.key
    return PROBEINFER.make(f"{what} of {role} probe {head.params['model']['name']}", params,
                           {"model": head.key, "features": features_key}, stage_role)


def run_head(stage: Stage, ctx: StageContext) -> Meta:
    import torch

    from w2s_ray.probe import run_probe_stage

    torch.set_num_threads(ctx.threads)
    return run_probe_stage(stage, ctx.store_uri)


def run_head_predictions(stage: Stage, ctx: StageContext) -> Meta:
    import torch

    from w2s_ray.probe import run_probe_infer_stage

    torch.set_num_threads(ctx.threads)
    return run_probe_infer_stage(stage, ctx.store_uri)


PROBE = register(StageKind(
    "probe", "a linear head on cached features (a Ray task, one CPU)", ProbeParams, run_head, counted,
    where="task", task_cpus=1, threads="one", request=cores_request, learns=True))
PROBEINFER = register(StageKind(
    "probeinfer", "a head's P(class 1) on a split's features (a Ray task, one CPU)", ProbeInferParams,
    run_head_predictions, counted, where="task", task_cpus=1, threads="one", request=cores_request))
