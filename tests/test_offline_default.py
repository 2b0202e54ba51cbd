"""The offline default's design end to end on a real local Ray cluster (the vader sample conftest installs):
TF-IDF and both controls supervising MiniLM-L6 probes, early stopped on weak-labelled validation rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import ExperimentConfig, ProbeConfig, Resources, SplitConfig
from w2s_ray.engine.scheduler import execute
from w2s_ray.label import read_predictions
from w2s_ray.plan import plan_experiments
from w2s_ray.results import cell_row

SUPERVISORS = ["tfidf", "random-flips@0.3", "learnable-flips@0.3"]


def test_tfidf_and_controls_supervise_probes_with_early_stopping(ray_cluster, tmp_path):
    cells = [ExperimentConfig("vader", weak, "minilm-l6", split=SplitConfig(seed, 200, 600, 400, 150),
                              finetune="probe", early_stopping=True, probe=ProbeConfig(epochs=8, lr=1e-2))
             for seed in (0, 1) for weak in SUPERVISORS]
    plan = plan_experiments(cells)
    store = ArtifactStore(str(tmp_path / "store"))
    report = execute(plan, store, Resources(max_concurrent_trials=2), str(tmp_path / "ray"), progress=lambda _: None)
    assert not report.failed and not report.blocked
    assert plan.counts()["features"] == 1  # one features job for both seeds and every supervisor

    rows = {(c.config.weak, c.config.split.seed): cell_row(store, c, n_boot=50) for c in plan.cells}
    for row in rows.values():
        assert row["status"] == "ok"
        assert 1 <= row["student_stop_epoch"] <= 8 and 1 <= row["ceiling_stop_epoch"] <= 8
        assert row["weak_stop_epoch"] is None  # no epochs to choose from
    for seed in (0, 1):
        random, learnable = rows[("random-flips@0.3", seed)], rows[("learnable-flips@0.3", seed)]
        assert abs(random["weak_acc"] - 0.7) < 0.07  # flips hit their rate on the test rows too
        assert abs(learnable["weak_acc"] - 0.7) < 0.1
        assert learnable["agreement"] > random["agreement"]  # the probe copies a hyperplane, not coin flips
        assert learnable["agreement"] > 0.8, learnable["agreement"]

    for cell in plan.cells:  # what a student trains on: ids, text and the weak P(class 1); never a GT label
        assert set(read_predictions(store, cell.weak_labels).columns) == {"id", "text", "p1"}
        assert np.isfinite(read_predictions(store, cell.weak_test)["p1"]).all()

    from w2s_ray.report import write_report
    from w2s_ray.results import aggregate, write_results

    out = tmp_path / "results"
    write_results(list(rows.values()), out, {"command": "test"}, agg=aggregate(list(rows.values())))
    report = (write_report(out)["report"]).read_text()
    controls = report.split("## Controls", 1)[1].split("##", 1)[0]
    assert "random-flips@0.3" in controls and "learnable-flips@0.3" in controls and "tfidf" not in controls
    assert "tfidf [probe]" not in report  # TF-IDF is no probe, whatever the finetune mode says
    claims = pd.read_csv(out / "claims.csv")  # the controls check the engine; the paper's claims use real supervisors
    paper = claims[claims["claim"] != "controls"]
    assert len(paper) and not paper["comparison"].str.contains("flips").any()
    assert claims[claims["claim"] == "controls"]["comparison"].str.contains("random-flips@0.3 - learnable").all()

    again = execute(plan, store, Resources(max_concurrent_trials=2), str(tmp_path / "ray"), progress=lambda _: None)
    assert not again.ran and len(again.cached) == len(plan.stages)  # re-running trains nothing
