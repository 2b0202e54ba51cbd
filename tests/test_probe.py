"""Linear-probe mode: head training math, planning, and a tiny grid on a real local Ray cluster."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from w2s_ray.config import ConfigError, ExperimentConfig, LossConfig, ProbeConfig, SplitConfig, TrainOverrides
from w2s_ray.plan import plan_experiments
from w2s_ray.probe import fit_head, predict_head

PROBE = {"lr": 0.05, "epochs": 15, "batch_size": 16, "weight_decay": 0.0}


def _separable(n: int = 400, d: int = 8, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d)).astype(np.float32) * 3 + 10  # off-centre and scaled: standardisation matters
    y = (x[:, 0] - x[:, 1] > 0).astype(np.float32)
    return x, y


def test_a_head_learns_a_linearly_separable_problem():
    x, y = _separable()
    weights, history = fit_head(x, y, {"name": "xent"}, PROBE, seed=0)
    assert np.mean((predict_head(weights, x) > 0.5) == (y > 0.5)) > 0.95
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_heads_are_reproducible_from_their_seed():
    x, y = _separable()
    a, _ = fit_head(x, y, {"name": "xent"}, PROBE, seed=3)
    b, _ = fit_head(x, y, {"name": "xent"}, PROBE, seed=3)
    assert torch.equal(a["weight"], b["weight"])


def test_logconf_with_alpha_zero_trains_the_same_head_as_xent():
    x, y = _separable()
    soft = np.clip(y * 0.8 + 0.1, 0, 1).astype(np.float32)
    a, _ = fit_head(x, soft, {"name": "xent"}, PROBE, seed=1)
    b, _ = fit_head(x, soft, {"name": "logconf", "alpha_max": 0.0, "warmup_frac": 0.2}, PROBE, seed=1)
    assert torch.allclose(a["weight"], b["weight"], atol=1e-6)


def test_the_alpha_ramp_reaches_alpha_max_in_the_history():
    x, y = _separable()
    _, history = fit_head(x, y, {"name": "logconf", "alpha_max": 0.6, "warmup_frac": 0.2}, PROBE, seed=0)
    assert history[0]["alpha"] < 0.6 and history[-1]["alpha"] == pytest.approx(0.6)


def _cfg(loss: LossConfig, **kw) -> ExperimentConfig:
    return ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6-2l", loss=loss,
                            split=SplitConfig(n_weak=64, n_strong=64, n_test=64),
                            train=TrainOverrides(max_len=32), finetune="probe", probe=ProbeConfig(**kw))


def test_an_alpha_grid_shares_features_weak_labels_and_ceiling():
    plan = plan_experiments([_cfg(LossConfig("logconf", a)) for a in (0.1, 0.5, 0.9)])
    kinds = plan.counts()
    assert kinds["features"] == 2 and kinds["probe"] == 2 + 3
    assert len({c.weak_labels for c in plan.cells}) == 1 and len({c.ceiling for c in plan.cells}) == 1
    other = plan_experiments([_cfg(LossConfig("xent"), lr=0.1)])  # head settings never change the features
    assert {s.key for s in plan.stages.values() if s.kind == "features"} == \
        {s.key for s in other.stages.values() if s.kind == "features"}


def test_probe_mode_refuses_chains_and_bad_probe_settings():
    with pytest.raises(ConfigError, match="finetune"):
        ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6", chain=("minilm-l6-2l",),
                         finetune="probe")
    with pytest.raises(ConfigError, match="epochs"):
        ProbeConfig(epochs=0)
    with pytest.raises(ConfigError, match="finetune"):
        ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6", finetune="lora")


@pytest.mark.ray
def test_a_probe_grid_on_ray_caches_features_once_and_keeps_gt_out_of_the_labels(ray_cluster, tmp_path):
    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.config import Resources
    from w2s_ray.engine.scheduler import execute
    from w2s_ray.results import cell_row

    store = ArtifactStore(str(tmp_path / "store"))
    first = plan_experiments([_cfg(LossConfig("xent")), _cfg(LossConfig("logconf", 0.5))])
    report = execute(first, store, Resources(num_cpus=4), str(tmp_path / "ray"), progress=lambda _: None)
    assert set(report.ran) == set(first.stages)
    cell = first.cells[0]
    labels = pq.read_table(store.path(cell.weak_labels, "data")).to_pandas()
    assert set(labels.columns) == {"id", "p1", "text"}  # no GT column: the text a fine-tuned student reads
    b = pq.read_table(store.path(cell.data, "B.parquet")).to_pandas()
    assert sorted(labels["id"]) == sorted(b["id"])
    assert labels.set_index("id")["text"].to_dict() == b.set_index("id")["text"].to_dict()
    rows = [cell_row(store, c, n_boot=50) for c in first.cells]
    assert all(0.0 <= r["student_acc"] <= 1.0 and r["n_test"] == 64 for r in rows)

    # reproducible: the heads trained again in a fresh store (same data and features) predict bit for bit alike
    twin = ArtifactStore(str(tmp_path / "twin"))
    for key, stage in first.stages.items():
        if stage.kind in ("rows", "data", "features"):
            twin.commit(key, store.local_dir(key), store.manifest(key).meta)
    again = execute(first, twin, Resources(num_cpus=4), str(tmp_path / "ray"), progress=lambda _: None)
    assert {first.stages[k].kind for k in again.ran} == {"probe", "probeinfer"}
    for c in first.cells:
        for key in (c.weak_labels, c.student_test, c.ceiling_test):
            mine = pq.read_table(store.path(key, "data")).to_pandas().sort_values("id").reset_index(drop=True)
            theirs = pq.read_table(twin.path(key, "data")).to_pandas().sort_values("id").reset_index(drop=True)
            assert mine.equals(theirs), key

    second = plan_experiments([_cfg(LossConfig("logconf", 0.75))])
    again = execute(second, store, Resources(num_cpus=4), str(tmp_path / "ray"), progress=lambda _: None)
    ran_kinds = sorted(store.manifest(k).meta["stage"].split()[0] for k in again.ran)
    assert ran_kinds == ["predict", "student"]  # features, weak, labels, ceiling: all loaded


PROBE_SPLIT = SplitConfig(seed=0, n_weak=64, n_strong=64, n_test=64, n_val=48)


@pytest.mark.ray
def test_probe_alpha_search_selects_on_weak_labels_only(ray_cluster, tmp_path):
    """Probe-mode search (TPE + ASHA over heads): GT outside half A shuffled -> identical trials and selection."""
    from conftest import shuffled_gt_files

    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.config import Resources, SearchConfig
    from w2s_ray.engine.scheduler import execute
    from w2s_ray.results import cell_row
    from w2s_ray.search import read_trials

    search = SearchConfig(objective="weak", num_samples=3, max_concurrent=1, seed=0)
    configs = [ExperimentConfig(str(p), "minilm-l6-1l", "minilm-l6-2l", split=PROBE_SPLIT, search=search,
                                train=TrainOverrides(max_len=32), finetune="probe", probe=ProbeConfig(epochs=6))
               for p in shuffled_gt_files(tmp_path, PROBE_SPLIT)]
    plan = plan_experiments(configs)
    assert all(s.kind != "train" for s in plan.stages.values())
    store = ArtifactStore(str(tmp_path / "store"))
    execute(plan, store, Resources(num_cpus=4), str(tmp_path / "ray"), progress=lambda _: None)
    (clean, shuffled) = [(read_trials(store, c.student), store.manifest(c.student).meta["best"]) for c in plan.cells]
    trials = clean[0]
    assert len(trials) == search.num_samples and trials["committed"].any()
    assert clean[1]["objective"] == trials.loc[trials["committed"], "objective"].max()
    cols = ["alpha_max", "warmup_frac", "objective", "epochs_run", "committed"]
    pd.testing.assert_frame_equal(trials[cols], shuffled[0][cols])
    chosen = ("alpha_max", "objective")
    assert {k: clean[1][k] for k in chosen} == {k: shuffled[1][k] for k in chosen}
    rows = [cell_row(store, c, n_boot=50) for c in plan.cells]
    assert rows[0]["method"] == "search:weak" and rows[0]["ceiling_acc"] != rows[1]["ceiling_acc"]
