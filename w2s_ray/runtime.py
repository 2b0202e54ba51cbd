"""The Ray runtime a run talks to: its cluster, the environment its processes get, and clean-up.

Every Ray call of a run goes to the cluster :func:`ensure_ray` started or
connected to (:func:`cluster_address`), never to whatever else runs on the
machine: two ``w2s-ray`` runs on one machine each have their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from w2s_ray.config import Resources

# Set in the driver and passed to every Ray process of the run.
RAY_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # bars inside Train workers ignore the driver's DataContext
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the legacy reporter is silent; the scheduler prints progress
    # Ctrl-C raises KeyboardInterrupt at once: committed artifacts and Train
    # checkpoints (not Tune's experiment state) are what a re-run resumes from.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    "RAY_DATA_LOG_LEVEL": "ERROR",  # Ray Data logs every job's plan; the driver prints our own progress
    # Train's controller polls its workers this often (default 2 s): a finished
    # training is noticed sooner; a slow poll is only a missed check, not a failure.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Processes the raylet starts at once: trials, Train workers and Data
    # actors legitimately need ~20 on a small machine.
    "RAY_worker_maximum_startup_concurrency": "8",
}

# A local cluster serves one run on one machine: no Prometheus scrape of
# Train metrics, no spot preemption to watch, no idle worker processes started
# ahead of need. Each of these keeps a Python process or thread waking up during
# training (docs/performance.md, "Lean local Ray runtime", has the figures).
LOCAL_RAY_ENV = {
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_enable_worker_prestart": "0",
    # Idle workers beyond this many are killed after 1 s (default: the CPU
    # count, which the trials, Train controllers and workers alone exceed):
    # the pooled process that serves inference jobs must survive a training.
    "RAY_num_workers_soft_limit": "64",
}


def _job_env_vars() -> dict[str, str]:
    """The env vars of the Ray Job this driver runs in (``ray job submit``), if any."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def ensure_ray(resources: Resources, dashboard: bool = False) -> None:
    """Connect to ``resources.address`` or start a local cluster sized for trials + ingest.

    A local cluster is always a new one of this process (never another run's),
    and starts the dashboard only when asked (``dashboard`` or
    ``resources.dashboard``; searches need it for the State API): its
    processes cost the loop ~3% on 2 cores.
    """
    import ray

    if ray.is_initialized():
        return
    local = not resources.address
    wanted = {**RAY_ENV, **(LOCAL_RAY_ENV if local else {})}
    for k, v in wanted.items():
        os.environ.setdefault(k, v)
    job_env = _job_env_vars()  # ray.init refuses to be given a Ray Job's own env_vars again
    env_vars = {k: os.environ[k] for k in list(wanted) + ["HF_HUB_OFFLINE", "W2S_RAY_HOME"]
                if k in os.environ and k not in job_env}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "ERROR"}
    if not local:
        ray.init(address=resources.address, **kwargs)
    else:
        cores = os.cpu_count() or 1
        ray.init(address="local", num_cpus=resources.num_cpus or 2 * cores,
                 include_dashboard=dashboard or resources.dashboard, **kwargs)


def cluster_address() -> str:
    """The GCS address of the cluster this process is connected to (the State API's target)."""
    import ray

    return ray.get_runtime_context().gcs_address


ORPHAN_AGE_S = 60.0


def release_orphan_placement_groups(min_age_s: float = ORPHAN_AGE_S) -> list[str]:
    """Remove this job's placement groups that hold resources for no live actor.

    When ASHA stops a Tune trial, Tune kills the trial actor and with it the
    TorchTrainer controller it owns; Train V2's worker placement group can be
    left reserved until the job ends, starving later trials (a search stalls
    with a PENDING worker group). Ray's own placement-group cleaner misses
    trials stopped by ASHA (docs/performance.md has the history), so
    searches keep this sweep.

    Only groups this job created (``creator_job_id``) are looked at, through
    this run's own cluster address: other jobs' reservations on a shared
    cluster, and other local clusters on the machine, are never touched.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors, list_placement_groups

    address, job = cluster_address(), ray.get_runtime_context().get_job_id()
    now_ns = time.time_ns()
    used = {a.placement_group_id for a in list_actors(address=address, filters=[("state", "=", "ALIVE")],
                                                      detail=True, raise_on_missing_output=False)
            if a.placement_group_id}
    released = []
    for pg in list_placement_groups(address=address, filters=[("state", "=", "CREATED"),
                                                             ("creator_job_id", "=", job)],
                                    detail=True, raise_on_missing_output=False):
        created = int((pg.stats or {}).get("creation_request_received_ns") or now_ns)
        if pg.placement_group_id not in used and not pg.is_detached and now_ns - created > min_age_s * 1e9:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg.placement_group_id))))
            released.append(pg.placement_group_id)
    return released


def trial_driver_request(resources: Resources) -> dict[str, float]:
    """What a trial's driver (the Tune function that runs a TorchTrainer) reserves.

    With ``driver_resource`` set, drivers land only on nodes that offer that
    custom resource (on-demand nodes in ``cluster/``), so losing a spot node
    costs a Train worker (retried from its checkpoint), never a trial driver.
    """
    request = {"CPU": resources.trial_cpus}
    if resources.driver_resource:
        request[resources.driver_resource] = 0.01
    return request


@contextlib.contextmanager
def quiet_tune_logs() -> Iterator[None]:
    """Tune logs each failed attempt with a full traceback; the scheduler reports the root cause once instead."""
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.train")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def root_cause(error: BaseException | str | None) -> str:
    """The exception line a user's code raised, out of a (possibly remote, possibly nested) traceback.

    Ray wraps a worker's exception in its own (``RayTaskError(...)``,
    ``TrainingFailedError``) and appends the original traceback: the last line
    that looks like ``SomeError: message`` is the one that says why.
    """
    lines = [ln.strip() for ln in str(error or "").strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head and " " not in head and (head.endswith(("Error", "Exception", "Interrupt")) or "." in head):
            return line
    return lines[-1] if lines else type(error).__name__


def local_concurrency(cores: int | None = None) -> int:
    """Trainings at a time for a single run on this machine: two, or one on a single core.

    Two side-by-side trainings with one thread each beat one training with
    two threads after the other on 2 cores (MiniLM-L6 steps: 1.09x the
    throughput, as two threads scale 1.81x, not 2x), and each one's launch
    and checkpoint overlap the other's steps.
    """
    return min(2, cores or os.cpu_count() or 1)
