"""End to end on a real local Ray cluster with small real pretrained models.

Weak = all-MiniLM-L6 cut to 1 layer, strong = cut to 2 layers, on a sample
of the real BIG-bench MultiEmo data: every stage runs through Ray Tune →
TorchTrainer and Ray Data, artifacts are committed, then a second run loads
everything and trains nothing.
"""

import pyarrow.parquet as pq
import pytest
from conftest import PIPELINE_EPOCHS, pipeline_config

from w2s_ray.config import LossConfig, Resources
from w2s_ray.engine.scheduler import execute
from w2s_ray.plan import plan_experiment
from w2s_ray.results import cell_row

pytestmark = pytest.mark.ray

CFG = pipeline_config()


@pytest.fixture(scope="module")
def first_run(pipeline_run):
    r = pipeline_run
    return r.out, r.store, r.plan, r.report, r.lines


def test_every_stage_runs_once_and_commits(first_run):
    _, store, plan, report, lines = first_run
    assert set(report.ran) == set(plan.stages) and not report.cached
    train_keys = [k for k, s in plan.stages.items() if s.kind == "train"]
    assert len(train_keys) == 3
    for key in train_keys:
        history = store.manifest(key).meta["history"]
        assert [h["epoch"] for h in history] == list(range(1, PIPELINE_EPOCHS + 1))
        files = store.manifest(key).files
        assert "model/head.safetensors" in files and "train_state.pt" not in files
    for stage in plan.stages.values():  # one progress line per finished stage, counted
        assert sum(f"] {stage.name}: " in line for line in lines) == 1, stage.name
    assert any("elapsed:" in line and "waiting" in line for line in lines)  # the count per state


def test_student_training_data_carries_no_ground_truth(first_run):
    _, store, plan, _, _ = first_run
    cell = plan.cells[0]
    labels = pq.read_table(store.path(cell.weak_labels, "data")).to_pandas()
    assert set(labels.columns) == {"id", "text", "p1"}
    b = pq.read_table(store.path(cell.data, "B.parquet")).to_pandas()
    assert set(labels["id"]) == set(b["id"])
    assert labels["p1"].between(0, 1).all() and labels["p1"].nunique() > 10  # soft labels


def test_logconf_ramp_recorded_in_history(first_run):
    _, store, plan, _, _ = first_run
    history = store.manifest(plan.cells[0].student).meta["history"]
    assert history[-1]["alpha"] == pytest.approx(0.5)


def test_results_row_is_measured_and_second_run_trains_nothing(first_run):
    out, store, plan, _, _ = first_run
    row = cell_row(store, plan.cells[0])
    for role in ("weak", "student", "ceiling"):
        assert 0.0 <= row[f"{role}_acc"] <= 1.0 and row[f"{role}_acc_se"] > 0
    assert row["n_test"] == 96
    again = plan_experiment(CFG)
    lines: list[str] = []
    report = execute(again, store, Resources(), str(out / "ray"), progress=lines.append)
    assert not report.ran and set(report.cached) == set(plan.stages)
    assert all("loaded from artifact" in line for line in lines)
    assert cell_row(store, again.cells[0]) == row


def test_changing_only_the_student_loss_reuses_weak_labels(first_run):
    out, store, plan, _, _ = first_run
    xent = plan_experiment(CFG.replace(loss=LossConfig("xent")))
    todo = [s.kind for s in xent.stages.values() if not store.exists(s.key)]
    assert sorted(todo) == ["infer", "train"]  # only the new student and its predictions


def test_large_table_route_streams_through_ray_data(first_run, monkeypatch, tmp_path):
    """Tables over ``ingest.IN_MEMORY_ROWS`` go through Ray Data (streaming_split shards, read_parquet jobs).

    Forced here for the pipeline's student and its weak labels: the student trains on every row each
    epoch and logs its GT-test monitor through a Ray Data shard; the weak labels computed from files
    equal the committed ones (same model, same rows; only the ingest route differs).
    """
    import dataclasses

    import numpy as np

    from w2s_ray import ingest
    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.label import read_predictions, run_infer_stage
    from w2s_ray.train import fit_train_stage

    _, store, plan, _, _ = first_run
    stages = {s.role: s for s in plan.stages.values()}
    monkeypatch.setattr(ingest, "IN_MEMORY_ROWS", 0)
    scratch = ArtifactStore(str(tmp_path / "store"))
    for key in {stages["student"].inputs["data"], stages["labels"].inputs["model"]}:
        scratch.commit(key, store.local_dir(key), store.manifest(key).meta)
    labels = run_infer_stage(stages["labels"], scratch, threads=1)
    assert labels["rows"] == store.manifest(stages["labels"].key).meta["rows"]
    ours, committed = (read_predictions(s, stages["labels"].key).sort_values("id") for s in (scratch, store))
    assert ours["id"].tolist() == committed["id"].tolist()
    np.testing.assert_allclose(ours["p1"], committed["p1"], atol=1e-5)
    params = stages["student"].params
    student = dataclasses.replace(stages["student"], params={**params, "monitor": "gt_test",
                                                             "train": {**params["train"], "epochs": 2}})
    meta = fit_train_stage(student, scratch, Resources(), str(tmp_path / "ray"), torch_threads=1)
    assert [h["samples"] for h in meta["history"]] == [labels["rows"]] * 2
    assert all(0.0 <= h["gt_test_acc"] <= 1.0 for h in meta["history"])
    assert meta["timing"]["loop_s"] > 0


def _store_with_test_labels_shuffled(store, data_key: str, root) -> "object":
    """A store holding a copy of ``data_key`` whose GT test labels are permuted (same key, new content)."""
    import shutil

    import numpy as np
    import pyarrow as pa

    from w2s_ray.artifacts import ArtifactStore

    src = root / "data"
    shutil.copytree(store.local_dir(data_key), src)
    (src / "manifest.json").unlink(missing_ok=True)
    test = pq.read_table(src / "test.parquet")
    labels = np.random.default_rng(0).permutation(test["label"].to_numpy())
    pq.write_table(test.set_column(test.schema.get_field_index("label"), "label", pa.array(labels)),
                   src / "test.parquet")
    shuffled = ArtifactStore(str(root / "store"))
    shuffled.commit(data_key, src, store.manifest(data_key).meta)
    return shuffled


def test_pgr_best_reads_gt_test_labels_that_nothing_else_reads(first_run, tmp_path):
    """The student's test curve (hence ``pgr_best``) is analysis only: with the GT test labels shuffled the
    weak labels and the student's weights and losses are the same bit for bit, and only the curve moves."""
    import dataclasses

    import numpy as np
    from safetensors.numpy import load_file

    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.label import read_predictions, run_infer_stage
    from w2s_ray.results import curve_fields
    from w2s_ray.train import fit_train_stage

    _, store, plan, _, _ = first_run
    stages = {s.role: s for s in plan.stages.values()}
    params = stages["student"].params
    student = dataclasses.replace(stages["student"], params={**params, "monitor": "gt_test", "monitor_points": 2,
                                                             "train": {**params["train"], "epochs": 2}})
    data_key, labels_key, weak_key = (student.inputs["data"], student.inputs["labels"],
                                      stages["labels"].inputs["model"])
    stores = {"gt": ArtifactStore(str(tmp_path / "gt" / "store")),
              "shuffled": _store_with_test_labels_shuffled(store, data_key, tmp_path / "shuffled")}
    stores["gt"].commit(data_key, store.local_dir(data_key), store.manifest(data_key).meta)
    out = {}
    for name, s in stores.items():
        s.commit(weak_key, store.local_dir(weak_key), store.manifest(weak_key).meta)
        run_infer_stage(stages["labels"], s, threads=1)  # the weak labels, from this store's data
        meta = fit_train_stage(student, s, Resources(), str(tmp_path / name / "ray"), torch_threads=1)
        model_dir = s.local_dir(student.key) / "model"
        weights = {f"{f.name}:{k}": v for f in sorted(model_dir.rglob("*.safetensors"))
                   for k, v in load_file(str(f)).items()}  # backbone and head
        out[name] = (read_predictions(s, labels_key).sort_values("id"), meta["history"], weights)
    (labels_gt, hist_gt, w_gt), (labels_sh, hist_sh, w_sh) = out["gt"], out["shuffled"]
    assert labels_gt["p1"].tolist() == labels_sh["p1"].tolist()
    assert [h["train_loss"] for h in hist_gt] == [h["train_loss"] for h in hist_sh]
    assert len(w_gt) > 2 and w_gt.keys() == w_sh.keys() and all(np.array_equal(w_gt[k], w_sh[k]) for k in w_gt)
    accs = {"weak_acc": 0.5, "ceiling_acc": 1.0}
    gt, sh = curve_fields(hist_gt, accs), curve_fields(hist_sh, accs)
    assert len(gt["curve_acc"]) == 4 and gt["curve_epochs"] == [0.5, 1.0, 1.5, 2.0]
    assert gt["curve_acc"] != sh["curve_acc"] and gt["pgr_best"] != sh["pgr_best"]
