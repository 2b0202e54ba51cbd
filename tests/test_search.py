"""Alpha search on a real local Ray cluster: Optuna + ASHA trials, selection on validation only.

The leakage test runs the same ``weak``-objective search twice on a local
dataset file: once as is, once with the GT labels of every row outside half A
(half B, validation, test) shuffled. Half A is untouched, so the weak model
and its labels are the same; if no GT label from B, validation or test reaches
training or selection, the trials and the selected configuration are identical.
"""

import pandas as pd
import pytest
from conftest import shuffled_gt_files

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import ExperimentConfig, Resources, SearchConfig, SplitConfig, TrainOverrides
from w2s_ray.engine.scheduler import execute
from w2s_ray.plan import plan_experiments
from w2s_ray.results import cell_row, trial_rows
from w2s_ray.search import read_trials

pytestmark = pytest.mark.ray

SPLIT = SplitConfig(seed=0, n_weak=64, n_strong=64, n_test=64, n_val=48)
SEARCH = SearchConfig(objective="weak", num_samples=2, max_concurrent=1, grace_period=1, seed=0)


@pytest.fixture(scope="module")
def searches(ray_cluster, tmp_path_factory):
    """Both searches in one plan and one store (their stages differ by data key): one pass of Ray overhead."""
    tmp = tmp_path_factory.mktemp("search")
    configs = [ExperimentConfig(str(path), "minilm-l6-1l", "minilm-l6-2l", split=SPLIT, search=SEARCH,
                                train=TrainOverrides(epochs=2, max_len=32, batch_size=16))
               for path in shuffled_gt_files(tmp, SPLIT)]
    plan = plan_experiments(configs)
    store = ArtifactStore(str(tmp / "store"))
    execute(plan, store, Resources(max_concurrent_trials=2), str(tmp / "ray"), progress=lambda _: None)
    return [(store, cell, read_trials(store, cell.student)) for cell in plan.cells]


def test_search_runs_its_budget_and_selects_on_validation(searches):
    store, cell, trials = searches[0]
    assert len(trials) == SEARCH.num_samples
    assert trials["committed"].any()
    best = store.manifest(cell.student).meta["best"]
    finished = trials[trials["committed"]]
    assert best["objective"] == finished["objective"].max()
    top = finished[finished["objective"] == best["objective"]]  # the selected student is one of those trials
    assert (best["alpha_max"], best["warmup_frac"]) in set(zip(top["alpha_max"], top["warmup_frac"]))
    row = cell_row(store, cell)
    assert row["method"] == "search:weak" and row["selection"] == "weak labels only"
    trial_table = pd.DataFrame(trial_rows(store, cell, row))
    assert trial_table["selected"].sum() == 1
    assert trial_table.loc[trial_table["selected"], "student_acc"].iloc[0] == row["student_acc"]


def test_weak_objective_never_sees_ground_truth_outside_half_a(searches):
    (store_a, cell_a, trials_a), (store_b, cell_b, trials_b) = searches
    cols = ["alpha_max", "warmup_frac", "lr", "objective", "epochs_run", "committed"]
    pd.testing.assert_frame_equal(trials_a[cols], trials_b[cols])
    for key_a, key_b in zip(trials_a["trial_key"], trials_b["trial_key"]):  # training itself saw no GT either
        losses = [[h["train_loss"] for h in store.manifest(k).meta["history"]]
                  for store, k in ((store_a, key_a), (store_b, key_b))]
        assert losses[0] == losses[1]
    best_a, best_b = (s.manifest(c.student).meta["best"] for s, c in ((store_a, cell_a), (store_b, cell_b)))
    assert {k: best_a[k] for k in ("alpha_max", "warmup_frac", "objective")} == \
           {k: best_b[k] for k in ("alpha_max", "warmup_frac", "objective")}
    # the shuffle was real: GT-trained ceilings and GT test accuracies differ
    assert cell_row(store_a, cell_a)["ceiling_acc"] != cell_row(store_b, cell_b)["ceiling_acc"]


def test_orphan_placement_groups_are_released_and_live_ones_kept(ray_cluster):
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from w2s_ray.runtime import release_orphan_placement_groups

    orphan, live = placement_group([{"CPU": 0.01}]), placement_group([{"CPU": 0.01}])
    ray.get([orphan.ready(), live.ready()])

    @ray.remote(num_cpus=0.01)
    class Holder:
        def ping(self):
            return 1

    holder = Holder.options(scheduling_strategy=PlacementGroupSchedulingStrategy(live)).remote()
    assert ray.get(holder.ping.remote()) == 1
    released = release_orphan_placement_groups(min_age_s=0)
    assert orphan.id.hex() in released and live.id.hex() not in released
    ray.kill(holder)
    ray.util.remove_placement_group(live)
