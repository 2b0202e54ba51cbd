"""Experiment tracking: each training as a run with its per-epoch metrics, each cell as a run with its result.

Backends, through their own APIs, from the driver as stages commit (so a
resumed sweep never logs a stage twice):

* ``mlflow``: ``MLFLOW_TRACKING_URI`` if set, else a local SQLite store
  ``<out>/mlflow.db`` (MLflow's file store is in maintenance mode);
* ``wandb``: the installed, configured client; offline mode when no API key
  is set (``wandb sync`` uploads later);
* ``tensorboard``: event files under ``<out>/tensorboard/<run>``.

Tracking never fails a training: a backend error is reported once on the
progress stream and tracking stops for the run; the results table is the record.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from w2s_ray.config import TRACKERS, ConfigError

CELL_METRICS = ("weak_acc", "student_acc", "ceiling_acc", "pgr", "pgr_ci_low", "pgr_ci_high", "pgr_best",
                "agreement", "weak_auroc", "student_auroc", "ceiling_auroc")


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested stage params as ``train.lr = 5e-05`` strings (what every backend's params accept)."""
    out: dict[str, str] = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{name}."))
        else:
            out[name] = str(v)[:250]
    return out


def epoch_metrics(history: list[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """(epoch, numeric metrics) per history record."""
    return [(int(h.get("epoch", i + 1)), {k: float(v) for k, v in h.items()
                                          if isinstance(v, (int, float)) and not isinstance(v, bool)})
            for i, h in enumerate(history)]


class Backend:
    def run(self, name: str, params: dict[str, str], tags: dict[str, str],
            steps: list[tuple[int, dict[str, float]]]) -> None:
        raise NotImplementedError


class MLflowBackend(Backend):
    def __init__(self, root: Path, experiment: str):
        import mlflow

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root.resolve()}/mlflow.db"
        root.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)

    def run(self, name: str, params: dict[str, str], tags: dict[str, str],
            steps: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(self.experiment_id, run_name=name)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in steps for k, v in values.items()]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run.info.run_id)


class WandbBackend(Backend):
    def __init__(self, root: Path, experiment: str):
        import wandb

        self.wandb, self.root, self.project = wandb, root, experiment
        self.mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")

    def run(self, name: str, params: dict[str, str], tags: dict[str, str],
            steps: list[tuple[int, dict[str, float]]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        run = self.wandb.init(project=self.project, name=name, config=params, tags=list(tags.values())[:5],
                              mode=self.mode, dir=str(self.root), reinit="create_new")
        for step, values in steps:
            run.log(values, step=step)
        run.finish()


class TensorBoardBackend(Backend):
    def __init__(self, root: Path, experiment: str):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer_cls, self.root = SummaryWriter, root / "tensorboard" / experiment

    def run(self, name: str, params: dict[str, str], tags: dict[str, str],
            steps: list[tuple[int, dict[str, float]]]) -> None:
        writer = self.writer_cls(log_dir=str(self.root / re.sub(r"[^\w.=-]+", "_", name)))
        writer.add_text("params", "\n".join(f"{k} = {v}" for k, v in {**tags, **params}.items()))
        for step, values in steps:
            for k, v in values.items():
                writer.add_scalar(k, v, step)
        writer.close()


BACKENDS: dict[str, type[Backend]] = {"mlflow": MLflowBackend, "wandb": WandbBackend,
                                      "tensorboard": TensorBoardBackend}


class Tracker:
    """Logs committed trainings and finished cells to one backend; after an error, stops (said once)."""

    def __init__(self, kind: str, root: Path, experiment: str, progress: Callable[[str], None] = print):
        if kind not in TRACKERS:
            raise ConfigError("tracking", f"{kind!r} is not allowed; allowed: {', '.join(TRACKERS)}")
        try:
            self.backend: Backend | None = BACKENDS[kind](root, experiment)
        except ImportError as e:
            raise ConfigError("tracking", f"{kind} is not installed ({e.name}): pip install {e.name}") from None
        self.kind, self.progress = kind, progress

    def _log(self, name: str, params: dict[str, str], tags: dict[str, str],
             steps: list[tuple[int, dict[str, float]]]) -> None:
        if self.backend is None:
            return
        try:
            self.backend.run(name, params, tags, steps)
        except Exception as e:  # noqa: BLE001  (tracking must never fail a training)
            self.backend = None
            self.progress(f"tracking ({self.kind}) stopped: {type(e).__name__}: {e}")

    def stage(self, stage: Any, meta: dict[str, Any]) -> None:
        """A committed training (or probe head): its params and per-epoch history."""
        if not stage.type.learns:  # one run per stage that fits a model
            return
        self._log(stage.name, flatten(stage.params), {"stage_key": stage.key, "role": stage.role,
                                                       "kind": stage.kind}, epoch_metrics(meta.get("history") or []))

    def cell(self, row: dict[str, Any]) -> None:
        """A finished cell: its final accuracies, PGR and interval."""
        name = f"cell {row['dataset']} {row['weak']} -> {row['strong']} {row['loss']} seed {row['seed']}"
        values = {k: float(row[k]) for k in CELL_METRICS if isinstance(row.get(k), (int, float))
                  and row[k] == row[k]}  # NaN (undefined PGR) is left out
        params = {k: str(row.get(k)) for k in ("dataset", "weak", "strong", "loss", "seed", "method", "alpha_max",
                                               "finetune") if k in row}
        self._log(name, params, {"kind": "cell", "student_key": str(row.get("student_key"))}, [(0, values)])
