"""Bootstrapping chains: planning, slicing of half B, prefix sharing, spec errors (no Ray)."""

import pytest

from w2s_ray.config import ConfigError, ExperimentConfig, LossConfig, SplitConfig
from w2s_ray.data import bootstrap_slice
from w2s_ray.plan import plan_experiments
from w2s_ray.spec import spec_from_dict

LADDER = ["minilm-l6-1l", "minilm-l6-2l", "minilm-l3", "minilm-l6"]


def _cfg(*chain: str, slices: int = 0, loss: str = "xent") -> ExperimentConfig:
    return ExperimentConfig("vader", chain[0], chain[-1], loss=LossConfig(loss),
                            split=SplitConfig(n_weak=100, n_strong=100, n_test=100),
                            chain=tuple(chain[1:-1]), bootstrap_slices=slices)


def _trains(plan):
    return [s for s in plan.stages.values() if s.kind == "train"]


def test_a_chain_trains_each_step_on_its_own_slice_labelled_by_the_step_before():
    plan = plan_experiments([_cfg("minilm-l6-1l", "minilm-l6-2l", "minilm-l6")])
    by_key = plan.stages
    students = [s for s in _trains(plan) if s.params["targets"] == "weak"]
    assert [s.params["model"]["name"] for s in students] == ["minilm-l6-2l", "minilm-l6"]
    teachers, parts = [], []
    for s in students:
        labels = by_key[s.inputs["labels"]]
        teachers.append(by_key[labels.inputs["model"]].params["model"]["name"])
        parts.append(tuple(labels.params["slice"]))
    assert teachers == ["minilm-l6-1l", "minilm-l6-2l"]
    assert parts == [(0, 2), (1, 2)]  # no model labels the rows it was trained on
    assert plan.cells[0].student == students[-1].key
    assert not [s for s in plan.stages.values() if s.kind == "infer" and s.params["split"] == "B"
                and "slice" not in s.params]  # no unused full-B labels


def test_chains_sharing_a_prefix_share_its_stages():
    a = _cfg("minilm-l6-1l", "minilm-l6-2l", "minilm-l3", slices=3)
    b = _cfg("minilm-l6-1l", "minilm-l6-2l", "minilm-l6", slices=3)
    together = len(_trains(plan_experiments([a, b])))
    apart = len(_trains(plan_experiments([a]))) + len(_trains(plan_experiments([b])))
    assert together == apart - 2
    # shared: weak (1l on A), the step 1l -> 2l on slice 1; ceilings differ (3l vs l6)
    shared = {s.key for s in _trains(plan_experiments([a]))} & {s.key for s in _trains(plan_experiments([b]))}
    assert len(shared) == 2


def test_the_chains_loss_changes_the_steps_but_not_the_weak_model():
    xent = plan_experiments([_cfg("minilm-l6-1l", "minilm-l6-2l", "minilm-l6")]).cells[0]
    conf = plan_experiments([_cfg("minilm-l6-1l", "minilm-l6-2l", "minilm-l6", loss="logconf")]).cells[0]
    assert xent.weak == conf.weak and xent.weak_labels == conf.weak_labels and xent.ceiling == conf.ceiling
    assert xent.student != conf.student


def test_slices_partition_groups_evenly_and_deterministically():
    groups = [f"g{i}" for i in range(3000)]
    parts = [bootstrap_slice(g, 3) for g in groups]
    assert parts == [bootstrap_slice(g, 3) for g in groups]
    counts = [parts.count(k) for k in range(3)]
    assert min(counts) > 900 and sum(counts) == 3000


def _spec(**bootstrap):
    return spec_from_dict({"name": "b", "datasets": ["vader"], "models": LADDER,
                           "losses": ["xent"], "bootstrap": bootstrap})


def test_spec_steps_pick_evenly_spaced_middle_models_of_the_ladder():
    assert _spec(steps=3).chain_list() == [LADDER]
    two = _spec(steps=2)
    assert two.chain_list() == [["minilm-l6-1l", "minilm-l6-2l", "minilm-l3"],
                                ["minilm-l6-1l", "minilm-l3", "minilm-l6"],
                                ["minilm-l6-2l", "minilm-l3", "minilm-l6"]]
    boot = [c for c in two.experiments() if c.chain]
    assert len(boot) == 3 and all(c.bootstrap_slices == 2 for c in boot)


@pytest.mark.parametrize("bootstrap,path", [
    ({}, "bootstrap"),
    ({"steps": 1}, "bootstrap.steps"),
    ({"steps": 5}, "bootstrap.steps"),
    ({"chains": [["minilm-l6-1l", "minilm-l6"]]}, "bootstrap.chains[0]"),
    ({"chains": [["minilm-l6-1l", "nope", "minilm-l6"]]}, "bootstrap.chains[0][1]"),
    ({"chains": [["minilm-l6-1l", "minilm-l6-2l", "minilm-l6"]], "slices": 1}, "bootstrap.slices"),
])
def test_bad_bootstrap_specs_name_the_field(bootstrap, path):
    with pytest.raises(ConfigError) as e:
        _spec(**bootstrap)
    assert e.value.path == path
