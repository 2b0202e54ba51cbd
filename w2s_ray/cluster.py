"""Offline validation of the cluster files under ``cluster/``.

A mistake in a cluster file otherwise shows up minutes into ``ray up`` or
``kubectl apply``, after nodes are paid for. This checks, with no cloud
credentials and no cluster:

- Ray cluster-launcher configs against Ray's own ``ray-schema.json`` and
  ``prepare_config``/``validate_config`` (what ``ray up`` runs before it
  launches anything), plus semantic checks Ray's schema misses;
- KubeRay ``RayCluster``/``RayJob`` manifests against a reduced copy of the
  KubeRay CRD schemas (``cluster/schemas/kuberay-v1.yaml``, which says where it
  came from), plus the semantic checks of KubeRay's ``validation.go``.

Every error names the file's field path, e.g. ``spec.workerGroupSpecs[0].replicaz``.
YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"
SCHEMA_DIR = CLUSTER_DIR / "schemas"
KUBERAY_SCHEMA = SCHEMA_DIR / "kuberay-v1.yaml"
KUBERAY_KINDS = ("RayCluster", "RayJob")
KUBERAY_API_VERSION = "ray.io/v1"
# rayStartParams that declare resources; KubeRay rejects them next to a group's `resources`.
RAY_START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
EXIT_INVALID = 2
_MAX_MESSAGE = 240


# ---------------------------------------------------------------- entry points


def validate_file(path: str | Path) -> list[str]:
    """Errors of one cluster file, each ``field.path: problem``; empty means valid."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        return [f"<file>: cannot read YAML: {_short(str(e))}"]
    if not isinstance(doc, dict):
        return ["<root>: expected a mapping (a launcher config or a KubeRay manifest)"]
    if "apiVersion" in doc or "kind" in doc:
        return validate_kuberay(doc)
    if "provider" in doc:
        return validate_launcher(doc)
    return ["<root>: neither a Ray launcher config (no `provider`) nor a KubeRay manifest (no `apiVersion`/`kind`)"]


def validate_paths(paths: Iterable[str | Path]) -> dict[str, list[str]]:
    """Errors per file, in the order given (files only; see :func:`discover` for folders)."""
    return {str(p): validate_file(p) for p in paths}


def discover(root: str | Path = CLUSTER_DIR) -> list[Path]:
    """Every cluster YAML under ``root``, leaving out the vendored schemas themselves."""
    root = Path(root)
    found = sorted({*root.rglob("*.yaml"), *root.rglob("*.yml")})
    return [p for p in found if SCHEMA_DIR.resolve() not in p.resolve().parents]


def main(argv: Sequence[str] | None = None) -> int:
    """``w2s-ray cluster validate [PATHS...]``: one line per file; 0 if all valid, else 2."""
    parser = argparse.ArgumentParser(prog="w2s-ray cluster validate", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="files or folders (default: every YAML under cluster/)")
    args = parser.parse_args(argv)
    files = _expand(args.paths) if args.paths else discover()
    if not files:
        print("w2s-ray cluster validate: error: no cluster YAML files found", flush=True)
        return EXIT_INVALID
    results = validate_paths(map(_display, files))
    for name, errors in results.items():
        for line in errors or ["ok"]:
            print(f"{name}: {line}", flush=True)
    return EXIT_INVALID if any(results.values()) else 0


def _display(path: Path) -> Path:
    """The path relative to the working directory when it lies below it (shorter lines)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _expand(paths: Sequence[str]) -> list[Path]:
    """Folders become the cluster YAML inside them; files stay as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(discover(p) if p.is_dir() else [p])
    return out


# ---------------------------------------------------------- jsonschema plumbing


def _short(message: str) -> str:
    """One line of bounded length (YAML and schema messages span lines and quote whole values)."""
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _field_path(parts: Iterable[Any]) -> str:
    """``spec.workerGroupSpecs[0].template``-style path, ``<root>`` when empty."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def _unknown_keys(error: jsonschema.ValidationError) -> list[str]:
    """Keys that an ``additionalProperties: false`` error is about."""
    known = set(error.schema.get("properties", {}))
    patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
    return sorted(str(k) for k in error.instance if k not in known and not any(p.search(str(k)) for p in patterns))


def _format(error: jsonschema.ValidationError, what: str) -> list[str]:
    """One line per problem; an unknown key is reported at its own path."""
    where = list(error.absolute_path)
    if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        return [f"{_field_path([*where, k])}: unknown field (not in the {what} schema)" for k in _unknown_keys(error)]
    if error.validator == "pattern" and "title" in error.schema:  # e.g. a Kubernetes quantity
        return [f"{_field_path(where)}: {error.instance!r} is not a {error.schema['title']}"]
    return [f"{_field_path(where)}: {_short(error.message)}"]


def _schema_errors(doc: Any, validator: jsonschema.protocols.Validator, what: str) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [line for e in errors for line in _format(e, what)]


# ------------------------------------------------------- Ray launcher configs


@functools.lru_cache(maxsize=1)
def _ray_schema_validator() -> jsonschema.protocols.Validator:
    """Ray's own launcher schema, the file ``ray up`` validates against."""
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def _ray_prepare(config: dict) -> dict:
    """Ray's ``prepare_config``: merges the provider's defaults and fills per-type min/max.

    A private Ray API (``ray.autoscaler._private.util``); it needs no credentials.
    """
    from ray.autoscaler._private.util import prepare_config

    with _quiet("ray.autoscaler._private.util"):  # it logs every default it fills in
        return prepare_config(copy.deepcopy(config))


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a chatty logger below WARNING for the duration."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ray_validate(config: dict) -> list[str]:
    """Ray's own final ``validate_config`` (private API), as a backstop for checks added in Ray."""
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(config)
    except Exception as e:  # noqa: BLE001 - Ray raises ValueError, RuntimeError or ValidationError
        return [f"<root>: ray rejects the config: {_short(str(e))}"]
    return []


def validate_launcher(config: dict) -> list[str]:
    """A ``ray up`` config: Ray's schema, then Ray's preparation, then semantics."""
    errors = _schema_errors(config, _ray_schema_validator(), "Ray cluster launcher")
    errors += [f"{key}: missing (needed by every current provider)"
               for key in ("available_node_types", "head_node_type") if key not in config]
    if errors:
        return errors
    try:
        prepared = _ray_prepare(config)
    except Exception as e:  # noqa: BLE001 - unknown provider, bad docker block, ...
        return [f"<root>: ray cannot prepare the config: {_short(repr(e))}"]
    return _launcher_semantics(prepared) or _ray_validate(prepared)


def _launcher_semantics(cfg: Mapping[str, Any]) -> list[str]:
    """What Ray's schema cannot state: cross-field limits and per-type sanity."""
    types: Mapping[str, Any] = cfg["available_node_types"]
    head = cfg["head_node_type"]
    errors = []
    if head not in types:
        errors.append(f"head_node_type: {head!r} is not a node type (available: {', '.join(sorted(types))})")
    for name, node_type in types.items():
        errors += _node_type_errors(f"available_node_types.{name}", node_type, name == head, cfg["provider"]["type"])
    total_min = sum(t.get("min_workers", 0) for t in types.values())
    if cfg["max_workers"] < total_min:
        errors.append(f"max_workers: {cfg['max_workers']} is below the sum of min_workers ({total_min})")
    return errors


def _node_type_errors(path: str, node_type: Mapping[str, Any], is_head: bool, provider: str) -> list[str]:
    lo, hi = node_type.get("min_workers", 0), node_type.get("max_workers", 0)
    errors = [f"{path}.{k}: {v} is negative" for k, v in (("min_workers", lo), ("max_workers", hi)) if v < 0]
    if lo > hi:
        errors.append(f"{path}.min_workers: {lo} is above max_workers ({hi})")
    resources = node_type.get("resources", {})
    if not is_head and resources and not any(resources.values()):
        errors.append(f"{path}.resources: every resource is 0, so no task or trial can run on this worker type")
    if provider == "gcp":
        errors += _gcp_gpu_errors(path, node_type)
    return errors


def _gcp_gpu_errors(path: str, node_type: Mapping[str, Any]) -> list[str]:
    """GCP does not detect GPUs: the declared GPU count must match the attached accelerators."""
    node_config = node_type.get("node_config", {})
    attached = sum(a.get("acceleratorCount", 0) for a in node_config.get("guestAccelerators", []))
    declared = node_type.get("resources", {}).get("GPU", 0)
    errors = []
    if attached != declared:
        errors.append(f"{path}.resources.GPU: declares {declared} but guestAccelerators attach {attached}")
    if attached and _gcp_scheduling(node_config).get("onHostMaintenance") != "TERMINATE":
        errors.append(f"{path}.node_config.scheduling.onHostMaintenance: must be TERMINATE on a GPU VM")
    return errors


def _gcp_scheduling(node_config: Mapping[str, Any]) -> dict:
    """``scheduling`` as one mapping (Ray's own examples write it as a list of mappings)."""
    scheduling = node_config.get("scheduling", {})
    if isinstance(scheduling, list):
        return {k: v for item in scheduling if isinstance(item, dict) for k, v in item.items()}
    return dict(scheduling) if isinstance(scheduling, dict) else {}


# ----------------------------------------------------------- KubeRay manifests


@functools.lru_cache(maxsize=len(KUBERAY_KINDS))
def _kuberay_validator(kind: str) -> jsonschema.protocols.Validator:
    """The vendored schema of one kind, with the shared definitions it refers to."""
    vendored = yaml.safe_load(KUBERAY_SCHEMA.read_text())
    schema = {**vendored[kind], "definitions": vendored["definitions"]}
    # 2020-12 so that keywords next to a $ref (defaults, minimum) still apply.
    return jsonschema.Draft202012Validator(schema)


def validate_kuberay(doc: Mapping[str, Any]) -> list[str]:
    """A RayCluster or RayJob: the CRD schema, then KubeRay's semantic checks."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if api != KUBERAY_API_VERSION:
        return [f"apiVersion: {api!r} is not {KUBERAY_API_VERSION}"]
    if kind not in KUBERAY_KINDS:
        return [f"kind: {kind!r} is not one of {', '.join(KUBERAY_KINDS)}"]
    errors = _schema_errors(doc, _kuberay_validator(kind), kind)
    if errors:
        return errors
    if kind == "RayCluster":
        return _raycluster_spec_errors("spec", doc["spec"])
    return _rayjob_errors(doc["spec"])


def _raycluster_spec_errors(path: str, spec: Mapping[str, Any]) -> list[str]:
    """KubeRay's ValidateRayClusterSpec, plus sane replica bounds and unique group names."""
    errors = _group_errors(f"{path}.headGroupSpec", spec["headGroupSpec"])
    groups = spec.get("workerGroupSpecs", [])
    for i, group in enumerate(groups):
        errors += _group_errors(f"{path}.workerGroupSpecs[{i}]", group)
        errors += _replica_errors(f"{path}.workerGroupSpecs[{i}]", group)
    repeated = [name for name, n in Counter(g["groupName"] for g in groups).items() if n > 1]
    errors += [f"{path}.workerGroupSpecs: groupName {name!r} is used more than once" for name in repeated]
    return errors


def _group_errors(path: str, group: Mapping[str, Any]) -> list[str]:
    errors = []
    if not group["template"].get("spec", {}).get("containers"):
        errors.append(f"{path}.template.spec.containers: needs at least one container (the Ray container)")
    params = group.get("rayStartParams", {})
    clashing = [k for k in RAY_START_RESOURCE_PARAMS if params.get(k)]
    if clashing and group.get("resources"):
        errors.append(f"{path}.resources: set together with rayStartParams {clashing}; KubeRay accepts only one")
    return errors


def _replica_errors(path: str, group: Mapping[str, Any]) -> list[str]:
    lo, hi = group["minReplicas"], group["maxReplicas"]
    errors = [f"{path}.{k}: {v} is negative" for k, v in (("minReplicas", lo), ("maxReplicas", hi)) if v < 0]
    if lo > hi:
        errors.append(f"{path}.minReplicas: {lo} is above maxReplicas ({hi})")
    return errors


def _rayjob_errors(spec: Mapping[str, Any]) -> list[str]:
    """KubeRay's ValidateRayJobSpec, plus: a submitted job needs an entrypoint."""
    errors = _rayjob_target_errors(spec) + _rayjob_number_errors(spec)
    if spec.get("submissionMode", "K8sJobMode") != "InteractiveMode" and not spec.get("entrypoint", "").strip():
        errors.append("spec.entrypoint: missing; the job has no command to run")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errors.append("spec.suspend: a RayJob may be suspended only with shutdownAfterJobFinishes: true")
    errors += _yaml_mapping_errors("spec.runtimeEnvYAML", spec.get("runtimeEnvYAML"))
    errors += _entrypoint_resources_errors(spec.get("entrypointResources"))
    if "rayClusterSpec" in spec:
        errors += _raycluster_spec_errors("spec.rayClusterSpec", spec["rayClusterSpec"])
    return errors


def _rayjob_target_errors(spec: Mapping[str, Any]) -> list[str]:
    """The job needs a cluster: one to create (rayClusterSpec) or one to select by name."""
    selector = spec.get("clusterSelector")
    if selector is None:
        return [] if "rayClusterSpec" in spec else ["spec: needs rayClusterSpec or clusterSelector"]
    if not selector.get("ray.io/cluster"):
        return ["spec.clusterSelector.ray.io/cluster: missing; it names the RayCluster to run on"]
    return []


def _rayjob_number_errors(spec: Mapping[str, Any]) -> list[str]:
    limits = {"activeDeadlineSeconds": 1, "backoffLimit": 0, "ttlSecondsAfterFinished": 0}
    return [f"spec.{k}: {spec[k]} is below {lo}" for k, lo in limits.items() if spec.get(k, lo) < lo]


def _yaml_mapping_errors(path: str, text: str | None) -> list[str]:
    if text is None:
        return []
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"{path}: not valid YAML: {_short(str(e))}"]
    return [] if value is None or isinstance(value, dict) else [f"{path}: must be a YAML mapping"]


def _entrypoint_resources_errors(text: str | None) -> list[str]:
    """``ray job submit --entrypoint-resources`` takes a JSON object of numbers."""
    if text is None:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"spec.entrypointResources: not valid JSON: {e.msg}"]
    numeric = isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values()
    )
    return [] if numeric else ["spec.entrypointResources: must be a JSON object of non-negative numbers"]


if __name__ == "__main__":
    raise SystemExit(main())
