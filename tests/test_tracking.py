"""Experiment tracking: a real MLflow store, read back through MLflow's own client."""

import pytest

from w2s_ray.config import ConfigError, ExperimentConfig, SplitConfig
from w2s_ray.plan import plan_experiment
from w2s_ray.tracking import Tracker, flatten

HISTORY = [{"epoch": 1, "epochs": 2, "train_loss": 0.61, "alpha": 0.0, "step": 4},
           {"epoch": 2, "epochs": 2, "train_loss": 0.42, "alpha": 0.0, "step": 8}]


@pytest.fixture(scope="module")
def plan(asset_home):
    """Planned once the asset home is set (planning fingerprints the dataset file)."""
    return plan_experiment(ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6",
                                            split=SplitConfig(0, 50, 50, 50)))


def _student(plan):
    return plan.stages[plan.cells[0].student]


def test_mlflow_holds_one_run_per_training_with_its_epochs_and_one_per_cell(plan, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    said: list[str] = []
    tracker = Tracker("mlflow", tmp_path, "sweep-x", progress=said.append)
    student = _student(plan)
    tracker.stage(student, {"history": HISTORY})
    tracker.stage(plan.stages[student.inputs["data"]], {})  # a data stage is not a training: no run
    tracker.cell({"dataset": "d", "weak": "w", "strong": "s", "loss": "xent", "seed": 0, "weak_acc": 0.7,
                  "student_acc": 0.75, "ceiling_acc": 0.8, "pgr": 0.5, "pgr_ci_low": float("nan")})
    assert (tmp_path / "mlflow.db").is_file() and not said
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep-x").experiment_id])
    by_kind = {r.data.tags["kind"]: r for r in runs}
    assert len(runs) == 2 and set(by_kind) == {"train", "cell"}
    train = by_kind["train"]
    assert train.info.run_name == student.name and train.data.tags["stage_key"] == student.key
    assert train.data.params["train.lr"] == str(student.params["train"]["lr"])
    losses = client.get_metric_history(train.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in losses] == [(1, 0.61), (2, 0.42)]
    cell = by_kind["cell"].data.metrics
    assert cell["pgr"] == 0.5 and "pgr_ci_low" not in cell  # NaN is left out


def test_a_tracking_failure_is_said_once_and_never_raises(plan, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    said: list[str] = []
    tracker = Tracker("mlflow", tmp_path, "x", progress=said.append)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tracker.backend.client, "log_batch", broken)  # fault injection
    tracker.stage(_student(plan), {"history": HISTORY})
    tracker.stage(_student(plan), {"history": HISTORY})
    assert said == ["tracking (mlflow) stopped: OSError: disk full"]


def test_a_missing_backend_is_a_config_error_and_params_flatten():
    with pytest.raises(ConfigError, match="tracking: 'neptune' is not allowed"):
        Tracker("neptune", None, "x")
    assert flatten({"train": {"lr": 1e-4, "epochs": 2}, "split": "B"}) == {"train.lr": "0.0001", "train.epochs": "2",
                                                                          "split": "B"}
