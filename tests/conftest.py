"""Shared fixtures: an offline asset home holding samples of the packaged datasets (and of two
BIG-bench tasks, for the optional BIG-bench path), and one real local Ray cluster per session
(starting Ray costs seconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


RAY_FIXTURES = {"ray_cluster"}  # a test that asks for one of these (or for a fixture that does) starts Ray


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the shared Ray cluster ``ray``, so ``-m "not ray"`` (make test-fast) leaves it
    out; tests that start Ray themselves (subprocess sweeps, extra clusters) carry the mark by hand."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session", autouse=True)
def no_ray_in_the_fast_tier(request: pytest.FixtureRequest):
    """Under ``-m "not ray"`` a test that starts Ray without its mark fails at once instead of slowing the tier."""
    if "not ray" not in (request.config.option.markexpr or ""):
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("this test starts Ray: mark it @pytest.mark.ray (make test-fast runs -m 'not ray')")

    original, ray.init = ray.init, refuse
    yield
    ray.init = original


@pytest.fixture(scope="session", autouse=True)
def asset_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """W2S_RAY_HOME with samples of each packaged dataset, laid out as ``w2s-ray setup`` fetches them
    (nothing is downloaded in tests), and sampled BIG-bench task.json files."""
    home = tmp_path_factory.mktemp("w2s-home")
    shutil.copytree(FIXTURES / "sources", home / "sources", ignore=shutil.ignore_patterns("README.md"))
    shutil.copytree(FIXTURES / "bigbench", home / "bigbench")
    os.environ["W2S_RAY_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by the integration tests."""
    import ray

    from w2s_ray.config import Resources
    from w2s_ray.runtime import ensure_ray

    ensure_ray(Resources(num_cpus=4), dashboard=True)  # tests read the State API
    yield ray
    ray.shutdown()


PIPELINE_EPOCHS = 3


def pipeline_config():
    """The one small end-to-end cell the pipeline and reliability tests share (3 epochs: room to kill mid-way)."""
    from w2s_ray.config import ExperimentConfig, LossConfig, SplitConfig, TrainOverrides

    return ExperimentConfig(
        "vader", "minilm-l6-1l", "minilm-l6-2l",
        loss=LossConfig("logconf", alpha_max=0.5, warmup_frac=0.2),
        split=SplitConfig(seed=0, n_weak=96, n_strong=96, n_test=96),
        train=TrainOverrides(epochs=PIPELINE_EPOCHS, max_len=32, batch_size=16, minibatch_size=8),
    )


@pytest.fixture(scope="session")
def pipeline_run(ray_cluster, tmp_path_factory):
    """One undisturbed run of :func:`pipeline_config` on Ray (store + Train runs under ``out``); read-only to tests."""
    from types import SimpleNamespace

    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.config import Resources
    from w2s_ray.engine.scheduler import execute
    from w2s_ray.plan import plan_experiment

    out = tmp_path_factory.mktemp("pipeline")
    cfg = pipeline_config()
    store = ArtifactStore(str(out / "store"))
    plan = plan_experiment(cfg)
    lines: list[str] = []
    report = execute(plan, store, Resources(max_concurrent_trials=2, max_failures=1), str(out / "ray"),
                     progress=lines.append)
    return SimpleNamespace(cfg=cfg, out=out, store=store, plan=plan, report=report, lines=lines)


def shuffled_gt_files(tmp_path: Path, split) -> tuple[Path, Path]:
    """Two dataset files of the same texts: as is, and with the GT label of every row outside half A
    flipped and permuted. Half A (the weak model's data) is identical in both, so anything computed
    without GT from B, validation or test must come out the same on both."""
    import numpy as np

    from w2s_ray.data import load_rows, resolve_dataset, split_rows

    rows = load_rows(resolve_dataset("vader"))[["text", "label"]]
    rows = rows.iloc[: split.n_weak + split.n_strong + split.n_test + split.n_val + 40].reset_index(drop=True)
    clean = tmp_path / "clean.parquet"
    rows.to_parquet(clean, index=False)
    parts = split_rows(load_rows(resolve_dataset(str(clean))), split)
    outside_a = ~rows["text"].isin(set(parts["A"]["text"]))
    shuffled = rows.copy()
    labels = shuffled.loc[outside_a, "label"].to_numpy()
    shuffled.loc[outside_a, "label"] = np.random.default_rng(1).permutation(1 - labels)  # flip, then permute
    path = tmp_path / "shuffled.parquet"
    shuffled.to_parquet(path, index=False)
    return clean, path
