"""Alpha search for one cell: Optuna (TPE) on Ray Tune, ASHA on per-epoch validation reports.

Each trial is an ordinary content-addressed ``train`` stage (a logconf
student with the sampled ``alpha_max``, ``warmup_frac`` and optionally ``lr``;
in probe mode a ``probe`` stage: a head on cached features, trained in the
trial's own process)
that evaluates its selection objective on the validation split after every
epoch and keeps its best-epoch checkpoint. A trial whose stage is already
committed reports its recorded history instead of training again, and the
Tune experiment is named by the search's key and restored when it exists, so
an interrupted search resumes.

Three stages the one scheduler runs: ``search`` (this Tune experiment;
it commits the trial table), ``trialtests`` (the test predictions of
every finished trial, for the report's PGR against alpha only: ordinary
``infer`` / ``probeinfer`` stages run with the scheduler's threads and
pools) and ``select`` (the finished trial with the best validation
objective: the student the plan names). Selection never sees a GT test
label. The experiment stays nested in one stage because TPE proposes each
trial from the per-epoch objectives of the earlier ones and ASHA stops
trials mid-training: the plan cannot know the trials before they run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import LossConfig, Resources
from w2s_ray.stages.base import Stage
from w2s_ray.stages.heads import PROBE, probe_infer_stage
from w2s_ray.stages.inference import infer_stage
from w2s_ray.stages.training import SELECT_COLUMN, TRAIN

Progress = Callable[[str], None]
TRIALS_FILE = "trials.parquet"


def probe_mode(search: Stage) -> bool:
    """Whether the search's trials are heads on cached features (else fine-tunings)."""
    return search.params.get("finetune") == "probe"


def search_epochs(stage: Stage) -> int:
    """Epochs of one trial of a search (or of a trial stage): the head's in probe mode."""
    return stage.params["probe"]["epochs"] if "probe" in stage.params else stage.params["train"]["epochs"]


def search_trial_stage(search: Stage, alpha_max: float, warmup_frac: float, lr: float | None) -> Stage:
    """One trial of a search as an ordinary train (or probe) stage: its own key, never retrained once committed."""
    p = search.params
    loss = LossConfig("logconf", round(alpha_max, 4), round(warmup_frac, 4))
    objective = p["search"]["objective"]
    select = {"objective": objective, "column": SELECT_COLUMN[objective]}
    if probe_mode(search):
        probe = dict(p["probe"], **({"lr": round(lr, 8)} if lr is not None else {}))
        params = {"model": p["model"], "probe": probe, "seed": p["seed"], "loss": loss.effective(), "split": "B",
                  "targets": "weak", "select": select}
        name = (f"trial (probe) {p['model']['name']} a={loss.alpha_max:g} w={loss.warmup_frac:g}"
                + (f" lr={probe['lr']:.2g}" if lr is not None else "") + f" ({objective})")
        return PROBE.make(name, params, dict(search.inputs), "search trial")
    train = dict(p["train"], **({"lr": round(lr, 8)} if lr is not None else {}))
    params = {"model": p["model"], "train": train, "loss": loss.effective(), "split": "B", "targets": "weak",
              "select": select} | ({"lora": p["lora"]} if "lora" in p else {})
    name = (f"trial {p['model']['name']} a={loss.alpha_max:g} w={loss.warmup_frac:g}"
            + (f" lr={train['lr']:.2g}" if lr is not None else "") + f" ({objective})")
    return TRAIN.make(name, params, dict(search.inputs), "search trial")


def search_space(search: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    space = {"alpha_max": tune.uniform(*search["alpha_max"]), "warmup_frac": tune.uniform(*search["warmup_frac"])}
    if search["lr"] is not None:
        space["lr"] = tune.loguniform(*search["lr"])
    return space


def trial_stage_of(stage: Stage, config: dict[str, Any]) -> Stage:
    return search_trial_stage(stage, config["alpha_max"], config["warmup_frac"], config.get("lr"))


def search_trial(config: dict[str, Any], stage: Stage, store_uri: str, resources: Resources, storage_path: str,
                 torch_threads: int) -> None:
    """A Tune function trial: train (or reload) one logconf student, reporting the objective per epoch."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from w2s_ray.train import fit_train_stage

    trial = trial_stage_of(stage, config)
    epochs = search_epochs(trial)
    store = ArtifactStore(store_uri)
    manifest = store.manifest(trial.key)
    if manifest is not None:  # trained before (resume): replay its reports so TPE and ASHA see them
        for h in manifest.meta["history"]:
            tune.report({k: h[k] for k in ("epoch", "objective", "train_loss")})
        if manifest.meta["history"][-1]["epoch"] < epochs:  # best epoch was not the last
            best = manifest.meta["history"][-1]
            tune.report({"epoch": epochs, "objective": best["objective"],
                         "train_loss": best["train_loss"], "selected_epoch": best["epoch"]})
        return
    if probe_mode(stage):  # a head on cached features, trained in this trial's process
        import torch

        from w2s_ray.probe import run_probe_stage

        def report_all_but_last(h: dict[str, Any]) -> None:  # the last epoch is reported after the commit
            if h["epoch"] < epochs:
                tune.report({k: h[k] for k in ("epoch", "objective", "train_loss")})

        torch.set_num_threads(torch_threads)
        meta = run_probe_stage(trial, store_uri, on_epoch=report_all_but_last)
    else:
        meta = fit_train_stage(trial, store, resources, storage_path, torch_threads,
                               callbacks=[_all_but_last_epoch(TuneReportCallback)()])
    best = meta["history"][-1]  # the kept checkpoint's history ends at its (best) epoch
    tune.report({"epoch": epochs, "objective": best["objective"],  # after the commit
                 "train_loss": best["train_loss"], "selected_epoch": best["epoch"]})


def _all_but_last_epoch(base: type) -> type:
    """Forward every epoch's report to Tune except the last.

    ASHA answers a report at ``max_t`` with STOP, and Tune then kills the trial
    at once: had the last epoch come through the Train callback, the trial would
    die between training and committing its model. The trial reports it itself,
    after the commit.
    """

    class Callback(base):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if metrics and metrics[0].get("epoch") == metrics[0].get("epochs"):
                return
            super().after_report(run_context, metrics, checkpoint)

    return Callback


class _SearchProgress:
    def __new__(cls, progress: Progress):
        from ray import tune

        class Callback(tune.Callback):
            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                if "objective" in result:
                    c = trial.config
                    progress(f"    trial a={c['alpha_max']:.3f} w={c['warmup_frac']:.3f}"
                             + (f" lr={c['lr']:.2g}" if "lr" in c else "")
                             + f": epoch {result['epoch']} objective {result['objective']:.4f}")

            def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
                now = time.monotonic()
                if now - self.last_sweep > 20:  # trials stopped by ASHA leave Train placement groups behind
                    self.last_sweep = now
                    from w2s_ray.runtime import release_orphan_placement_groups

                    for pg in release_orphan_placement_groups():
                        progress(f"    released placement group {pg[:12]} of a stopped trial")

        cb = Callback()
        cb.last_sweep = time.monotonic()
        return cb


def run_search_stage(stage: Stage, store: ArtifactStore, resources: Resources, storage_path: str,
                     progress: Progress = print) -> dict[str, Any]:
    """Run (or resume) the search's Tune experiment; commit the trial table (no test set is read here)."""
    t0 = time.perf_counter()
    grid = _tune(stage, store, resources, storage_path, progress)
    trials = _trial_table(stage, store, grid)
    if not trials["committed"].any():
        raise RuntimeError(f"{stage.name}: no trial finished")
    with store.building(stage.key) as build:
        trials.to_parquet(build.dir / TRIALS_FILE, index=False)
        build.meta = meta = {
            "stage": stage.name, "params": stage.params, "inputs": stage.inputs, "seconds": time.perf_counter() - t0,
            "objective": stage.params["search"]["objective"], "trials": len(trials),
            "finished": int(trials["committed"].sum())}
    return meta


def search_of(store: ArtifactStore, key: str) -> Stage:
    """A committed search stage, rebuilt from its manifest (its params and inputs are recorded there)."""
    meta = store.manifest(key, verify=False).meta
    return Stage(key, "search", meta["stage"], meta["params"], meta["inputs"], "search")


def run_trial_tests_stage(stage: Stage, ctx: Any) -> dict[str, Any]:
    """Test predictions of every finished trial (for the report's PGR against alpha only), each an ordinary
    ``infer`` (``probeinfer``) stage run by its kind's runner with this stage's threads."""
    t0 = time.perf_counter()
    store, search = ctx.store, search_of(ctx.store, stage.inputs["model"])
    trials = read_trials(store, search.key).drop(columns=["test_key"], errors="ignore")
    trials["test_key"] = [_predict_test(search, row, ctx) if row.committed else None for row in trials.itertuples()]
    with store.building(stage.key) as build:
        trials.to_parquet(build.dir / TRIALS_FILE, index=False)
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs,
                             "rows": int(trials["test_key"].notna().sum()), "seconds": time.perf_counter() - t0}
    return meta


def _predict_test(search: Stage, row: Any, ctx: Any) -> str:
    """One finished trial's test predictions; → their artifact key."""
    trial = trial_stage_of(search, {"alpha_max": row.alpha_max, "warmup_frac": row.warmup_frac,
                                    "lr": None if search.params["search"]["lr"] is None else row.lr})
    if trial.key != row.trial_key:  # the table's knobs are the trial's own, so this is a bug, not bad input
        raise RuntimeError(f"{search.name}: trial {row.trial_name} rebuilt as {trial.key}, not {row.trial_key}")
    if probe_mode(search):
        infer = probe_infer_stage("search trial", trial, search.inputs["features"], "test")
    else:
        infer = infer_stage("search trial", trial, search.inputs["data"], "test")
    if not ctx.store.exists(infer.key):
        infer.type.run(infer, ctx)
    return infer.key


def run_select_stage(stage: Stage, ctx: Any) -> dict[str, Any]:
    """The student the search selected: the finished trial with the best validation objective (ties: the first).

    It reads the trial table that carries the test predictions' keys only to
    hand them on; the choice looks at the ``objective`` column alone.
    """
    t0 = time.perf_counter()
    store = ctx.store
    trials = read_trials(store, stage.inputs["tests"])
    best = trials[trials["committed"]].sort_values(["objective", "trial_index"], ascending=[False, True]).iloc[0]
    with store.building(stage.key) as build:
        trials.to_parquet(build.dir / TRIALS_FILE, index=False)
        build.meta = meta = {
            "stage": stage.name, "params": stage.params, "inputs": stage.inputs, "seconds": time.perf_counter() - t0,
            "objective": stage.params["objective"],
            "best": {k: _plain(best[k]) for k in ("trial_key", "test_key", "alpha_max", "warmup_frac", "lr",
                                                  "objective")},
            "trials": len(trials), "finished": int(trials["committed"].sum())}
    return meta


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _tune(stage: Stage, store: ArtifactStore, resources: Resources, storage_path: str, progress: Progress) -> Any:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from w2s_ray.runtime import quiet_tune_logs, trial_driver_request

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per search otherwise
    search = stage.params["search"]
    concurrent = min(search["max_concurrent"], resources.max_concurrent_trials)
    threads = resources.torch_threads or max(1, (os.cpu_count() or 1) // concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(search_trial, stage=stage, store_uri=store.uri, resources=resources,
                             storage_path=storage_path, torch_threads=threads),
        trial_driver_request(resources))
    name = f"search-{stage.key}"
    path = f"{storage_path.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        progress(f"    resuming the search from {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(search),
            tune_config=tune.TuneConfig(
                metric="objective", mode="max", num_samples=search["num_samples"],
                search_alg=ConcurrencyLimiter(OptunaSearch(seed=search["seed"]), max_concurrent=concurrent),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=search_epochs(stage),
                                        grace_period=search["grace_period"],
                                        reduction_factor=search["reduction_factor"]),
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=_trial_retries(stage, resources)),
                                      callbacks=[_SearchProgress(progress)]),
        )
    with quiet_tune_logs():
        return tuner.fit()


def _trial_retries(stage: Stage, resources: Resources) -> int:
    """Retries of one trial, counted once: a fine-tuning's are Ray Train's (it resumes from its checkpoint),
    so Tune adds none; a head has no Train run, so Tune retries it."""
    return resources.max_failures if probe_mode(stage) else 0


def _trial_table(stage: Stage, store: ArtifactStore, grid: Any) -> pd.DataFrame:
    """One row per trial: its sampled knobs, best validation objective, epochs run, and its stage key."""
    rows = []
    for i, result in enumerate(grid):
        config = result.config
        trial = trial_stage_of(stage, config)
        history = result.metrics_dataframe
        objective = float(history["objective"].max()) if history is not None and "objective" in history else None
        committed = store.exists(trial.key)  # a committed trial trained every epoch (it kept its best one)
        epochs = search_epochs(stage) if committed else (
            int(history["epoch"].max()) if history is not None and "epoch" in history else 0)
        rows.append({
            "trial_index": i, "trial_key": trial.key, "trial_name": trial.name,
            "alpha_max": trial.params["loss"]["alpha_max"], "warmup_frac": trial.params["loss"]["warmup_frac"],
            "lr": (trial.params.get("probe") or trial.params["train"])["lr"], "objective": objective,
            "epochs_run": epochs,
            "stopped_early": not committed and result.error is None, "committed": committed,
            "error": None if result.error is None else str(result.error).strip().splitlines()[-1],
        })
    return pd.DataFrame(rows)


def read_trials(store: ArtifactStore, key: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(store.path(key, TRIALS_FILE), filesystem=store.fs).to_pandas()
