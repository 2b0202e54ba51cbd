"""Shared fixtures: an offline asset home holding the BIG-bench test samples,
and one real local Ray cluster per session (starting Ray costs seconds)."""

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


@pytest.fixture(scope="session", autouse=True)
def asset_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """W2S_RAY_HOME with the sampled task.json files (the 358 MB sdist stays out of tests)."""
    home = tmp_path_factory.mktemp("w2s-home")
    shutil.copytree(FIXTURES / "bigbench", home / "bigbench")
    os.environ["W2S_RAY_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by the integration tests."""
    import ray

    from w2s_ray.config import Resources
    from w2s_ray.execute import ensure_ray

    ensure_ray(Resources(num_cpus=4))
    yield ray
    ray.shutdown()
