"""What ``w2s-ray plan`` prints: a sweep's unique stages per role, each training's request, its cells."""

from __future__ import annotations

from typing import TYPE_CHECKING

from w2s_ray.plan import Plan, naive_trainings
from w2s_ray.stages import Stage

if TYPE_CHECKING:
    from w2s_ray.spec import SweepSpec

TRAINING_ROLES = ("weak", "ceiling", "student", "bootstrap", "adapt")


def trial_request(stage: Stage, use_gpu: bool, num_workers: int, worker_cpus: float) -> str:
    """What one training trial of ``stage`` asks the cluster for, in words."""
    if not use_gpu:
        return f"{num_workers} worker(s) x {worker_cpus:g} CPU"
    need = stage.type.gpu(stage) if stage.type.gpu else None
    if need is None:
        return f"{num_workers} worker(s) x 1 GPU"
    if not need["fits"]:
        return "does not fit one node"
    gb = f", ~{need['per_gpu_gb']:g} GB/GPU" if need["per_gpu_gb"] is not None else ""
    extras = ", grad checkpointing" if need["gradient_checkpointing"] else ""
    return f"{need['gpus_per_trial']} GPU ({need['strategy']}{gb}{extras})"


def _grid(spec: SweepSpec, plan: Plan) -> str:
    if spec.parts:
        return f"the union of {len(spec.parts)} part(s)"
    variants = len(spec.loss_configs()) + (len(spec.search.objectives) if spec.search else 0)
    return (f"{len(spec.datasets)} dataset(s) x {len(spec.seeds)} seed(s) x {len(spec.pair_list())} pair(s) x "
            f"{variants} loss variant(s)" + (f" + {len(spec.chain_list())} bootstrap chain(s) x "
                                             f"{len(spec.loss_configs())} loss(es)" if spec.chain_list() else ""))


def describe_plan(spec: SweepSpec, plan: Plan) -> str:
    """``w2s-ray plan``: the unique stages per role, what each training asks for, and the cells."""
    r = spec.resources
    roles, kinds = plan.role_counts(), plan.counts()
    trainings = sum(v for k, v in roles.items() if k in TRAINING_ROLES)
    searches = [s for s in plan.stages.values() if "search" in s.params]  # a search stage holds its settings
    budget = sum(s.params["search"]["num_samples"] for s in searches)
    lines = [
        f"sweep {spec.name}: {_grid(spec, plan)} = {len(plan.cells)} cells",
        "unique stages: " + ", ".join(f"{v} {k}" for k, v in roles.items()),
        f"trainings: {trainings}" + (f" + up to {budget} search trial(s) in {len(searches)} search(es)"
                                     if searches else "")
        + f" (without sharing stages: {naive_trainings([c.config for c in plan.cells])})",
        f"resources: profile {r.profile}, max {r.max_concurrent_trials} concurrent trial(s), "
        f"{r.num_workers} Train worker(s) per trial, storage {r.storage or '(local: --out)'}",
    ]
    fine_tunings = [s for s in plan.stages.values() if s.type.training]
    if fine_tunings:
        lines += ["", "trainings (stage, epochs, max_len, per-trial request, key):"]
    if kinds.get("probe"):
        device = "1 GPU" if r.use_gpu else "1 CPU"
        lines.append(f"probe mode: {kinds['probe']} linear head(s) on the cached features of "
                     f"{kinds.get('features', 0)} backbone(s); each features job "
                     f"asks for {device} (a Ray Data actor), each head for 1 CPU (a Ray task)")
    width = max((len(s.name) for s in fine_tunings), default=0)
    for s in fine_tunings:
        t = s.type.training(s)
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
