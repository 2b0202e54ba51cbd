"""A real multi-node Ray cluster on this machine: a sweep submitted as a Ray Job survives losing a node.

Nodes (``ray.cluster_utils.Cluster``, run by a small controller subprocess
with its own ``RAY_TMPDIR``, so ``ray.init()`` elsewhere on the machine never
finds this cluster and the pytest process never connects to it):

* head: 1 CPU, ``{"w2s_driver": 2}``, dashboard (Job server) on a free port;
* worker: 3 CPUs, ``{"trainer": 4}``; later killed and replaced (same resources).

The sweep is submitted through ``JobSubmissionClient`` with the sweep driver
pinned by ``entrypoint_resources`` and the trial drivers by the spec's
``resources.driver_resource``. Train workers reserve 1 CPU and a trial driver
0.5 on the 1-CPU head, so a Train worker can only run on a worker node.
Store, Tune/Train state and results live in one shared directory (standing
in for NFS). Once the first training has committed and another training has
checkpointed with epochs to go, the worker node is killed (SIGKILL, no drain) and a replacement
started; the job must still succeed with every planned stage committed
exactly once and a full results table. Where each actor ran is read back
from the State API (dead actors included).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.plan import plan_experiments
from w2s_ray.spec import load_spec

NAME = "multinode"
HEAD = {"num_cpus": 1, "resources": {"w2s_driver": 2}}
WORKER = {"num_cpus": 3, "resources": {"trainer": 4}}
JOB_TIMEOUT_S = 900
STRONG_EPOCHS = 6

# Runs the cluster in its own process: start head + worker, then obey "kill" / "add" / "stop" on stdin.
CONTROLLER = r'''
import json, sys
from ray.cluster_utils import Cluster

def say(**kw):
    print("W2S-CTL " + json.dumps(kw), flush=True)

cfg = json.loads(sys.argv[1])
cluster = Cluster(shutdown_at_exit=True)
try:
    head = cluster.add_node(wait=False, **cfg["head"])
    cluster._wait_for_node(head, timeout=cfg["timeout"])
    worker = cluster.add_node(wait=False, **cfg["worker"])
    cluster._wait_for_node(worker, timeout=cfg["timeout"])
    say(address=cluster.address, head=head.node_id, worker=worker.node_id)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "kill":  # node loss: SIGKILL the raylet and everything on the node, no drain
            cluster.remove_node(worker, allow_graceful=False)
            say(killed=worker.node_id)
        elif cmd == "add":
            worker = cluster.add_node(wait=False, **cfg["worker"])
            cluster._wait_for_node(worker, timeout=cfg["timeout"])
            say(worker=worker.node_id)
        else:
            break
finally:
    cluster.shutdown()
    say(stopped=True)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterController:
    """The controller subprocess and its line protocol."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.dashboard_port = _free_port()
        head = {**HEAD, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                "dashboard_port": self.dashboard_port, "object_store_memory": 200 << 20,
                # notice a killed node in seconds, not the default ~15 s
                "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}}
        # own agent ports: another local cluster (the tests' session one) may hold Ray's defaults
        head.update(dashboard_agent_listen_port=_free_port(), metrics_export_port=_free_port())
        worker = {**WORKER, "object_store_memory": 200 << 20, "dashboard_agent_listen_port": _free_port(),
                  "metrics_export_port": _free_port()}
        cfg = {"head": head, "worker": worker, "timeout": 180}
        script = workdir / "controller.py"
        script.write_text(CONTROLLER)
        self.stderr_path = workdir / "controller.err"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - the controller writes it until close()
        self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, env=env,
                                     start_new_session=True)
        self._lines: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.info = self.reply(240)
        except BaseException:
            self.stop()
            raise
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("W2S-CTL "):
                self._lines.put(json.loads(line[len("W2S-CTL "):]))

    def reply(self, timeout: float) -> dict:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"cluster controller gave no answer in {timeout}s; stderr:\n{self.stderr()}") from None

    def send(self, cmd: str, timeout: float = 240) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-4000:]

    def stop(self) -> None:
        """Shut the cluster down: ask, then terminate the controller, then its whole process group."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=90)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # what the controller left (its session only)
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._stderr.close()


def _spec(address: str, shared: Path) -> dict:
    return {
        "name": NAME,
        "datasets": ["vader"],
        "models": ["minilm-l6-1l", "minilm-l6-2l"],
        "pairs": "weak<strong",
        "losses": ["xent"],
        "seeds": [0],
        "split": {"n_weak": 64, "n_strong": 64, "n_test": 64},
        "train": {"epochs": 2, "max_len": 32, "batch_size": 16},
        # the strong model trains longer, so its runs outlive the weak one's commit and the node can be lost
        # after a checkpoint with epochs still to go (then the run resumes from that checkpoint)
        "model_train": {"minilm-l6-2l": {"epochs": STRONG_EPOCHS}},
        "resources": {"profile": "cluster", "address": address, "storage": str(shared), "trial_cpus": 0.5,
                      "worker_cpus": 1.0, "max_concurrent_trials": 2, "max_failures": 2,
                      "driver_resource": "w2s_driver", "torch_threads": 1},
    }


def _actors(dashboard: str, **filters: str) -> list:
    from ray.util.state import list_actors

    for attempt in range(10):
        try:
            return list_actors(address=dashboard, filters=[(k, "=", v) for k, v in filters.items()], detail=True,
                               limit=10000, raise_on_missing_output=False, timeout=60)
        except Exception:
            if attempt == 9:
                raise
            time.sleep(3)
    return []


def _interruptible(shared: Path, keys: set[str]) -> dict[str, int]:
    """The trainings whose latest checkpoint has at least two epochs still to go, with its epoch: one of them
    cannot finish in the moment between this look and the kill (an epoch takes about a second here)."""
    found = {}
    for key in keys:
        epochs = []
        for h in (shared / "ray" / key).glob("checkpoint_*/history.json"):
            with contextlib.suppress(OSError, ValueError):  # Ray may still be copying this checkpoint in
                epochs.append(len(json.loads(h.read_text())))
        if epochs and max(epochs) <= STRONG_EPOCHS - 2:
            found[key] = max(epochs)
    return found


@pytest.fixture(scope="module")
def multinode_sweep(tmp_path_factory, asset_home):
    from ray.job_submission import JobStatus, JobSubmissionClient

    t_start = time.time()
    root = tmp_path_factory.mktemp("multinode")
    shared = root / "shared"  # every node's view of "NFS"
    shared.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="w2smn", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           "RAY_worker_maximum_startup_concurrency": "8"}
    env.pop("RAY_ADDRESS", None)
    try:
        ctl = ClusterController(root, env)
    except BaseException:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        raise
    result: dict = {"shared": shared, "nodes": dict(ctl.info), "t_cluster": time.time() - t_start}
    try:
        spec_path = root / f"{NAME}.yaml"
        spec_path.write_text(yaml.safe_dump(_spec(ctl.info["address"], shared)))
        plan = plan_experiments(load_spec(spec_path).experiments())
        train_keys = {k for k, s in plan.stages.items() if s.kind == "train"}
        store = ArtifactStore(str(shared / "store"))

        deadline = time.time() + 120
        while True:  # the Job server comes up a little after the head
            try:
                client = JobSubmissionClient(ctl.dashboard)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        job_env = {
            "W2S_RAY_HOME": os.environ["W2S_RAY_HOME"], "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_AUTH_MODE": "disabled",
            # a Train worker group waits this long for the replacement node
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "240",
        }
        entrypoint = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "w2s_ray.cli", "sweep",
                                                         str(spec_path), "--out", str(shared)))
        deadline = time.time() + 120
        while True:  # the head's job agent registers a little after the Job server answers
            try:
                job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": job_env},
                                           entrypoint_resources={"w2s_driver": 1})
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.time() > deadline:
                    raise
                time.sleep(2)
        result["job_id"] = job_id
        t_job = time.time()

        def status() -> JobStatus:
            return client.get_job_status(job_id)

        # node loss: once a training has committed and another one has checkpointed an epoch (with epochs to
        # go) while its Train worker runs on the worker node
        first_worker, killed_at = ctl.info["worker"], None
        deadline, next_status = time.time() + JOB_TIMEOUT_S, 0.0
        while time.time() < deadline:
            if time.time() > next_status:
                if status().is_terminal():
                    break
                next_status = time.time() + 5
            committed = {e["key"] for e in store.ledger()} & train_keys
            if committed and _interruptible(shared, train_keys - committed):
                running = [a for a in _actors(ctl.dashboard, class_name="RayTrainWorker", state="ALIVE")
                           if a.node_id == first_worker]
                # the actor listing takes seconds on 2 cores: decide on the checkpoints as they are now, so a
                # training that finished meanwhile is not counted as interrupted
                checkpointed = _interruptible(shared, train_keys - committed)
                if running and checkpointed:
                    killed_at = {"committed": sorted(committed), "checkpointed": checkpointed,
                                 "running_workers": [a.actor_id for a in running], "t": time.time() - t_job}
                    break
            time.sleep(0.25)
        result["killed_at"] = killed_at
        if killed_at is not None:
            ctl.send("kill")
            time.sleep(3)  # the node is gone for a moment, as a preempted spot node would be
            result["replacement"] = ctl.send("add")["worker"]
        while time.time() < deadline and not status().is_terminal():
            time.sleep(2)
        result["status"] = status()
        result["job_seconds"] = time.time() - t_job
        result["logs"] = client.get_job_logs(job_id)
        (root / "job.log").write_text(result["logs"])
        result["job_info"] = client.get_job_info(job_id)
        result["all_actors"] = _actors(ctl.dashboard)
        result["train_workers"] = [a for a in result["all_actors"] if a.class_name == "RayTrainWorker"]
        result.update(plan=plan, train_keys=train_keys, store=store)
        summary = {"cluster_s": round(result["t_cluster"]), "job": str(result["status"]),
                   "job_s": round(result["job_seconds"]), "killed_at": killed_at, "nodes": ctl.info,
                   "replacement": result.get("replacement"),
                   "actors": sorted(f"{a.class_name} {a.state} {(a.node_id or '-')[:8]}" for a in result["all_actors"])}
        (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print("multinode:", json.dumps(summary, default=str))
        yield result
    finally:
        ctl.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.ray
def test_sweep_job_survives_losing_a_worker_node(multinode_sweep):
    r = multinode_sweep
    logs = r.get("logs", "")[-6000:]
    assert r["killed_at"] is not None, f"no training was running on the worker node after the first commit\n{logs}"
    assert r["status"] == "SUCCEEDED", f"job {r['status']}:\n{logs}"
    plan, store = r["plan"], r["store"]
    # every planned stage committed, each exactly once (the interrupted training resumed and committed once)
    counts = collections.Counter(e["key"] for e in store.ledger())
    assert set(counts) == set(plan.stages), (set(plan.stages) ^ set(counts), logs)
    assert set(counts.values()) == {1}, counts
    assert all(store.exists(k) for k in plan.stages)
    # the results table, in the shared directory
    cells = pd.read_parquet(r["shared"] / "sweeps" / NAME / "results.parquet")
    assert len(cells) == len(plan.cells) == 1
    for col in ("weak_acc", "student_acc", "ceiling_acc", "weak_auroc", "agreement"):
        assert cells[col].notna().all(), col
    assert (r["shared"] / "store" / "objects").is_dir() and (r["shared"] / "ray").is_dir()


@pytest.mark.ray
def test_placement_drivers_on_the_head_train_workers_on_worker_nodes(multinode_sweep):
    r = multinode_sweep
    head, first, second = r["nodes"]["head"], r["nodes"]["worker"], r.get("replacement")
    assert second and second not in (head, first)
    assert r["job_info"].driver_node_id == head  # entrypoint_resources={"w2s_driver": 1}
    workers = r["train_workers"]
    on = collections.Counter(a.node_id for a in workers)
    assert set(on) <= {first, second}, on  # never on the head (its 1 CPU holds only trial drivers)
    assert on[first] >= 1 and on[second] >= 1, on  # trained before the loss and after it
    killed = [a for a in workers if a.actor_id in r["killed_at"]["running_workers"]]
    assert killed and all(a.state == "DEAD" and a.node_id == first for a in killed)
    # the interrupted training started a new worker group: more Train workers than trainings
    assert len(workers) > len(r["train_keys"]), on
    # Tune function trials (a later Tuner's class shows as "wrap_function.<locals>.ImplicitFunc")
    drivers = [a for a in r["all_actors"] if a.class_name.endswith("ImplicitFunc")]
    assert 1 <= len(drivers) <= len(r["train_keys"])  # Tune reuses a finished trial's process (reuse_actors)
    for a in drivers:  # resources.driver_resource pinned every trial driver (in its placement group bundle)
        assert any(k.startswith("w2s_driver") for k in a.required_resources or {}), a.required_resources
        assert a.node_id == head
    controllers = [a for a in r["all_actors"] if a.class_name == "TrainController"]
    assert controllers and {a.node_id for a in controllers} == {head}  # Train controllers follow their driver


@pytest.mark.ray
def test_the_interrupted_training_resumed_from_its_checkpoint(multinode_sweep):
    """Each run the node loss interrupted went on from its checkpoint: its worker loop started twice, the second
    time after an epoch it had checkpointed, and its history holds each epoch once (a fresh start would
    hold every epoch with one start).

    The test sees a checkpoint once its files are on the shared disk; Train registers it a moment later
    (after its report), so a kill in between resumes from the epoch before the one seen (seen here on a
    slow 2-core machine: epoch 3 on disk, resumed after epoch 2). Either is a resume, never a restart."""
    r = multinode_sweep
    assert r["killed_at"]["checkpointed"]
    for key, epoch in r["killed_at"]["checkpointed"].items():  # the strong model's trainings
        history = r["store"].manifest(key).meta["history"]
        assert [h["epoch"] for h in history] == list(range(1, STRONG_EPOCHS + 1)), (key, history)
        starts = [h["epoch"] for h in history if "worker_started_at" in h]
        assert len(starts) == 2 and starts[0] == 1 and starts[1] >= max(epoch, 2), (key, epoch, starts)


def test_ensure_ray_inside_a_ray_job_keeps_the_job_runtime_env(monkeypatch, asset_home):
    """Inside a Ray Job, ensure_ray's runtime_env must merge with the job's (cheap: ray.init is faked)."""
    import ray
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from w2s_ray import runtime

    job_runtime_env = {"env_vars": {"W2S_RAY_HOME": os.environ["W2S_RAY_HOME"], "HF_HUB_OFFLINE": "1"}}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({"runtime_env": job_runtime_env}))
    for k, v in runtime.RAY_ENV.items():  # ensure_ray setdefaults these: restore them afterwards
        monkeypatch.setenv(k, os.environ.get(k, v))
    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    runtime.ensure_ray(Resources(address="127.0.0.1:6379"))
    assert seen["address"] == "127.0.0.1:6379"
    # what ray.init does with a driver runtime_env inside a job (None: it raises "Failed to merge")
    merged = _merge_runtime_env(job_runtime_env, seen.get("runtime_env"))
    assert merged is not None, "ray.init would refuse to merge the driver's runtime_env with the job's"
    assert merged["env_vars"]["W2S_RAY_HOME"] == os.environ["W2S_RAY_HOME"]
