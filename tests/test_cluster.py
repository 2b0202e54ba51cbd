"""The cluster files validate offline, and broken copies are rejected with a reason.

No cloud credentials, no cluster, no Ray runtime: Ray's launcher schema and
``prepare_config`` plus the vendored KubeRay CRD schema only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from w2s_ray import cluster

CLUSTER = cluster.CLUSTER_DIR
AWS, GCP = CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"
RAYCLUSTER, RAYJOB = CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _broken_copy(tmp_path: Path, source: Path, mutate: Callable[[dict], Any]) -> Path:
    """A copy of ``source`` with one mistake made by ``mutate``, written to tmp_path."""
    doc = _load(source)
    mutate(doc)
    out = tmp_path / source.name
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_discover_finds_every_config_but_not_the_schemas() -> None:
    found = cluster.discover()
    assert {AWS, GCP, RAYCLUSTER, RAYJOB} <= set(found)
    assert not [p for p in found if "schemas" in p.parts]


@pytest.mark.parametrize("path", cluster.discover(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_cluster_yaml_is_valid(path: Path) -> None:
    assert cluster.validate_file(path) == []


def _worker_group(doc: dict) -> dict:
    return doc["spec"]["workerGroupSpecs"][0]


BROKEN = {
    "unknown top-level key": (AWS, lambda d: d.update(max_wrokers=4), ["max_wrokers", "unknown field"]),
    "min_workers above max_workers": (
        AWS,
        lambda d: d["available_node_types"]["gpu_spot"].update(min_workers=9, max_workers=8),
        ["available_node_types.gpu_spot.min_workers", "above max_workers"],
    ),
    "head_node_type names no node type": (
        GCP,
        lambda d: d.update(head_node_type="ray_head_default"),
        ["head_node_type", "ray_head_default", "not a node type"],
    ),
    "cluster max_workers below the sum of min_workers": (
        AWS,
        lambda d: d.update(max_workers=1) or d["available_node_types"]["gpu_ondemand"].update(min_workers=2),
        ["max_workers", "sum of min_workers"],
    ),
    "worker type with nothing to schedule": (
        AWS,
        lambda d: d["available_node_types"]["gpu_spot"].update(resources={"CPU": 0}),
        ["available_node_types.gpu_spot.resources", "every resource is 0"],
    ),
    "GCP GPU count differs from the accelerators": (
        GCP,
        lambda d: d["available_node_types"]["gpu_spot"]["resources"].update(GPU=4),
        ["available_node_types.gpu_spot.resources.GPU", "guestAccelerators"],
    ),
    "RayCluster worker group with an unknown key": (
        RAYCLUSTER,
        lambda d: _worker_group(d).update(maxReplica=4),
        ["spec.workerGroupSpecs[0].maxReplica", "unknown field"],
    ),
    "RayCluster minReplicas above maxReplicas": (
        RAYCLUSTER,
        lambda d: _worker_group(d).update(minReplicas=9, maxReplicas=2),
        ["spec.workerGroupSpecs[0].minReplicas", "above maxReplicas"],
    ),
    "RayCluster GPU limit that is no quantity": (
        RAYCLUSTER,
        lambda d: _worker_group(d)["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory="28 GB"),
        ["limits.memory", "quantity"],
    ),
    "RayJob missing its entrypoint": (RAYJOB, lambda d: d["spec"].pop("entrypoint"), ["spec.entrypoint", "missing"]),
    "RayJob with no cluster to run on": (
        RAYJOB,
        lambda d: d["spec"].pop("clusterSelector"),
        ["rayClusterSpec or clusterSelector"],
    ),
    "RayJob of another API version": (
        RAYJOB,
        lambda d: d.update(apiVersion="ray.io/v1alpha1"),
        ["apiVersion", "ray.io/v1alpha1"],
    ),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_copy_is_rejected_with_a_reason(tmp_path: Path, case: str) -> None:
    source, mutate, expected = BROKEN[case]
    errors = cluster.validate_file(_broken_copy(tmp_path, source, mutate))
    assert errors, f"{case}: accepted"
    assert any(all(part in e for part in expected) for e in errors), errors


def test_unreadable_and_unknown_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("max_workers: [1\n")
    (tmp_path / "other.yaml").write_text("name: not a cluster\n")
    result = cluster.validate_paths([tmp_path / "bad.yaml", tmp_path / "other.yaml", tmp_path / "gone.yaml"])
    assert [bool(errors) for errors in result.values()] == [True, True, True]
    assert "cannot read YAML" in result[str(tmp_path / "bad.yaml")][0]


def test_rayjob_runs_the_paper_sweep() -> None:
    assert _load(RAYJOB)["spec"]["entrypoint"] == "w2s-ray sweep sweeps/paper-nlp.yaml"


@pytest.mark.parametrize("path", [AWS, GCP], ids=["aws", "gcp"])
def test_launcher_head_runs_no_trials_and_holds_the_driver(path: Path) -> None:
    cfg = _load(path)
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0, "w2s_driver": 1}
    spot = [name for name, t in types.items() if "w2s_driver" in t["resources"] and _is_spot(t["node_config"])]
    assert not spot, f"sweep driver may land on spot nodes: {spot}"


def _is_spot(node_config: dict) -> bool:
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    gcp = node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"
    return aws or gcp


def test_raycluster_keeps_trials_off_the_head_and_sizes_shm() -> None:
    spec = _load(RAYCLUSTER)["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_main_prints_one_line_per_file_and_sets_the_exit_code(tmp_path: Path, capsys) -> None:
    assert cluster.main([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(cluster.discover()) and all(line.endswith(": ok") for line in out)

    broken = _broken_copy(tmp_path, RAYJOB, lambda d: d["spec"].pop("entrypoint"))
    assert cluster.main([str(AWS), str(broken)]) == cluster.EXIT_INVALID
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("aws.yaml: ok")
    assert str(broken) in out[1] and "spec.entrypoint" in out[1]


def test_main_accepts_a_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "kuberay").mkdir()
    (tmp_path / "kuberay" / "rayjob.yaml").write_text(RAYJOB.read_text())
    assert cluster.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("rayjob.yaml: ok")


def test_validation_does_not_modify_the_config() -> None:
    doc = _load(AWS)
    before = copy.deepcopy(doc)
    assert cluster.validate_launcher(doc) == []
    assert doc == before
