"""``search``: an alpha search for one cell, Optuna + ASHA in a Tune experiment of its own (a Ray task).

Its trials are ordinary ``train`` stages (``probe`` stages in probe mode)
with their own keys: a committed trial is never trained again. The search
stays one stage with a nested experiment because TPE must see each trial's
per-epoch objective to propose the next and ASHA must stop trials
mid-training; the plan cannot know the trials before the search runs. See
:mod:`w2s_ray.search` for how it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from w2s_ray.config import LoraConfig, ProbeConfig, Resources, SearchConfig, TrainConfig
from w2s_ray.models import ModelSpec
from w2s_ray.stages.base import Meta, Stage, StageContext, StageKind, register, rows_cost
from w2s_ray.stages.data import counted
from w2s_ray.stages.inference import inference_cost, job_slot
from w2s_ray.stages.training import training_cost, training_gpus


@dataclass(frozen=True)
class SearchParams:
    model: dict[str, Any]
    loss: dict[str, Any]
    split: str
    targets: str
    search: dict[str, Any]
    train: dict[str, Any] | None = None  # full fine-tuning's trials
    lora: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None  # probe mode's trials
    seed: int | None = None
    finetune: str | None = None  # "probe" in probe mode
    cell: int | None = None


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
    return SEARCH.make(f"alpha search {model.name} on labels of {teacher} (objective {search.objective})",
                       params, inputs, "search")


def probe_search_stage(model: ModelSpec, probe: ProbeConfig, seed: int, search: SearchConfig, features: Stage,
                       data: Stage, labels: Stage, val_labels: Stage, teacher: str) -> Stage:
    """Probe mode's alpha search: every trial is a head on the strong model's cached features."""
    params = {"model": model.effective(), "probe": asdict(probe), "seed": seed, "loss": {"name": "logconf"},
              "split": "B", "targets": "weak", "search": asdict(search), "finetune": "probe"}
    inputs = {"features": features.key, "data": data.key, "labels": labels.key, "val_labels": val_labels.key}
    return SEARCH.make(f"alpha search (probe) {model.name} on labels of {teacher} (objective "
                       f"{search.objective})", params, inputs, "search")


def probe_mode(search: Stage) -> bool:
    from w2s_ray.search import probe_mode  # the implementation imports this package: imported when used

    return probe_mode(search)


def run_search(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.search import run_search_stage

    return run_search_stage(stage, ctx.store, ctx.resources, ctx.storage_path, progress=lambda _: None)


def run_trial_tests(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.search import run_trial_tests_stage

    return run_trial_tests_stage(stage, ctx)


def run_select(stage: Stage, ctx: StageContext) -> Meta:
    from w2s_ray.search import run_select_stage

    return run_select_stage(stage, ctx)


def concurrent_trials(stage: Stage, threads: int, resources: Resources) -> dict[str, float]:
    """Its concurrent trials: that many training slots and their cores."""
    k = min(stage.params["search"]["max_concurrent"], resources.max_concurrent_trials)
    return {"trainings": k, "cores": k * threads}


def search_cost(stage: Stage, rows: dict[str, int], model: dict[str, Any] | None) -> float:
    """``num_samples`` trainings on B; heads on cached features cost ~0 in probe mode."""
    return rows_cost(stage, rows, model) if probe_mode(stage) else training_cost(stage, rows, model)


@dataclass(frozen=True)
class TrialTestsParams:
    split: str  # "test"
    trials: int  # the search's budget (for the cost estimate)
    max_len: int | None  # full fine-tuning's (None in probe mode: heads cost ~0)
    cell: int | None = None


@dataclass(frozen=True)
class SelectParams:
    objective: str  # the validation objective the search ran on
    cell: int | None = None


def trial_tests_stage(search: Stage) -> Stage:
    """Test predictions of every finished trial of ``search`` (the report's PGR against alpha; never selects)."""
    p = search.params
    params = {"split": "test", "trials": p["search"]["num_samples"],
              "max_len": None if probe_mode(search) else p["train"]["max_len"]}
    return TRIALTESTS.make(f"predict test of every trial of {search.name}", params,
                           {"model": search.key, "data": search.inputs["data"]}, "search predictions")


def select_stage(search: Stage, tests: Stage) -> Stage:
    """The student ``search`` selected on its validation objective, with its test predictions' key."""
    return SELECT.make(f"student selected by {search.name}", {"objective": search.params["search"]["objective"]},
                       {"search": search.key, "tests": tests.key}, "selection")


def trial_tests_cost(stage: Stage, rows: dict[str, int], model: dict[str, Any] | None) -> float:
    if stage.params["max_len"] is None:
        return rows_cost(stage, rows, model)
    return inference_cost(stage, rows, model) * stage.params["trials"]


def searched(stage: Stage, meta: Meta) -> str:
    return f"{meta['finished']}/{meta['trials']} trials finished"


def selected(stage: Stage, meta: Meta) -> str:
    b = meta["best"]
    return (f"selected a={b['alpha_max']:g} w={b['warmup_frac']:g} (validation objective {meta['objective']}: "
            f"{b['objective']:.4f}); {meta['finished']}/{meta['trials']} trials finished")


SEARCH = register(StageKind(
    "search", "an alpha search: Optuna + ASHA over logconf students in a Tune experiment (a Ray task)",
    SearchParams, run_search, searched, where="task", request=concurrent_trials, cost=search_cost, late=True,
    dashboard=True, gpu=lambda s: None if probe_mode(s) else training_gpus(s)))
TRIALTESTS = register(StageKind(
    "trialtests", "every finished trial's test predictions, for the report (Ray Data batch inference)",
    TrialTestsParams, run_trial_tests, counted, request=job_slot, cost=trial_tests_cost))
SELECT = register(StageKind(
    "select", "the trial with the best validation objective: the search's student (driver thread)", SelectParams,
    run_select, selected, uses_ray=False))
