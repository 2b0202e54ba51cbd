"""Pinned artifact keys: a refactor of the config classes must leave every stage key as it was.

Keys address committed artifacts; a changed key silently retrains everything a
store already holds. These were computed before the configs moved to pydantic, on the test
dataset samples conftest installs (the data fingerprint is part of every key)
with the offline model packages installed (their version is part of the
model's). A registry change that changes keys on purpose updates them here.
"""

from w2s_ray.cli import build_parser, experiment_from_args
from w2s_ray.config import ExperimentConfig, LossConfig
from w2s_ray.plan import plan_experiment, plan_experiments
from w2s_ray.spec import spec_from_dict

LADDER = ["minilm-l6-1l", "minilm-l6"]


def roles(plan: object) -> dict[str, str]:
    return {f"{s.role}:{s.kind}": k for k, s in plan.stages.items()}


def test_offline_default_keys():
    """`w2s-ray run --dataset multiemo-sentences --weak minilm-l6-1l --strong minilm-l6 --loss xent` (make demo)."""
    cfg = ExperimentConfig("vader", *LADDER, loss=LossConfig("xent"))
    assert experiment_from_args(build_parser().parse_args(["run"])) == cfg  # the CLI's defaults are these
    assert roles(plan_experiment(cfg)) == {
        "data:data": "data-6e314f51e13743920af0f74d",
        "weak:train": "train-b8469c9364d24a0f81c03aa3",
        "labels:infer": "infer-ba9cae8a36c61c8db102b355",
        "ceiling:train": "train-cd5ea511c07a9916abe1293e",
        "student:train": "train-7ad4a3db95c67c6f498921d4",
        "weak predictions:infer": "infer-73dbd90f1dbf1c79be589075",
        "ceiling predictions:infer": "infer-c7f0c0519126c3d0e6e80b58",
        "student predictions:infer": "infer-528ab43c4d2789b9a746fd1f",
    }


def test_logconf_and_search_cell_keys():
    spec = spec_from_dict({
        "name": "pin-search", "datasets": ["vader"], "models": LADDER, "losses": ["logconf"],
        "alpha_max": [0.75], "split": {"n_weak": 1000, "n_strong": 600, "n_val": 400, "n_test": 2000},
        "train": {"epochs": 2}, "search": {"objectives": ["oracle"], "num_samples": 6, "lr": [1e-5, 1e-3]}})
    plan = plan_experiments(spec.experiments())
    assert [(c.config.method, c.student) for c in plan.cells] == [
        ("fixed", "train-fd8ec749164aa51615365be2"), ("search:oracle", "search-6ebf21539e1cde76b1253c15")]
    assert roles(plan) == {
        "data:data": "data-ed42ec127992f74eaaed995f",
        "weak:train": "train-a3e4e41b16f6a07999629d4e",
        "labels:infer": "infer-36151d7b18d23c64519e292c",
        "val labels:infer": "infer-dbcc3c3ab090e10c4b57e11e",
        "ceiling:train": "train-a43e904091cf4590571797b9",
        "student:train": "train-fd8ec749164aa51615365be2",
        "search:search": "search-6ebf21539e1cde76b1253c15",
        "weak predictions:infer": "infer-c14ba8beb1b378000390fc00",
        "ceiling predictions:infer": "infer-5522e540624a141419336560",
        "student predictions:infer": "infer-b89f627fd4ff0dbea9e1671a",
    }


def test_probe_mode_cell_keys():
    spec = spec_from_dict({
        "name": "pin-probe", "datasets": ["vader"], "models": LADDER, "losses": ["logconf"],
        "alpha_max": [0.5], "threshold_buffer": 64, "split": {"n_weak": 1000, "n_strong": 1000, "n_test": 2000},
        "train": {"max_len": 64}, "finetune": {"weak": "full", "strong": "probe"},
        "probe": {"lr": 0.01, "epochs": 20, "batch_size": 32}})
    assert roles(plan_experiments(spec.experiments())) == {
        "data:data": "data-6e314f51e13743920af0f74d",
        "weak:train": "train-b8469c9364d24a0f81c03aa3",
        "labels:infer": "infer-ba9cae8a36c61c8db102b355",
        "features:features": "features-b2a073bc8f70c4dae6d058b7",
        "ceiling:probe": "probe-c9dac7637223b635d4e709eb",
        "student:probe": "probe-ad2556131015c59f7d9b1d1a",
        "weak predictions:infer": "infer-73dbd90f1dbf1c79be589075",
        "ceiling predictions:probeinfer": "probeinfer-cf16f3b6dd19f300ef9ffffe",
        "student predictions:probeinfer": "probeinfer-fa5548056b2644b321366c3e",
    }
