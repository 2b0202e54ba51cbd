"""Reliability: damaged artifacts are found and rebuilt; a SIGKILLed Train worker resumes from its checkpoint.

Store level (no Ray): real parquet, safetensors and manifest files are
truncated, bit-flipped, deleted or rewritten; the store reports the artifact
absent with a warning naming it, and a recommit makes it whole again (the
ledger shows the artifact built twice).

End to end (one module fixture on the session ``ray_cluster``, tiny real
models, one cell ``minilm-l6-1l -> minilm-l6-2l``, 3 epochs):

1. an undisturbed run commits every stage once (store A);
2. store B is seeded with A's upstream artifacts (everything but the student
   and its test predictions);
3. in A, a committed weak-labels parquet file is bit-flipped and the student's
   ``model/head.safetensors`` truncated; the re-run warns about exactly those
   two, re-runs exactly those two stages (nothing upstream) and the ledger
   shows them committed twice and everything else once;
4. in B, the student's Ray Train worker is SIGKILLed once its first epoch
   checkpoint is registered; Train's ``FailureConfig(max_failures)`` restarts
   it from that checkpoint, the plan completes, the student's history holds
   epochs 1..3 once each with the pre-kill epoch carried over from the
   checkpoint, and the results row equals the undisturbed run's.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import PIPELINE_EPOCHS, pipeline_config

from w2s_ray.artifacts import MANIFEST, ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.plan import plan_experiment

KEY = "train-" + "cd" * 12
ARTIFACT_LOG = "w2s_ray.artifacts"


# -- store level: real files, no Ray ----------------------------------------------------------


def _real_artifact(root: Path) -> Path:
    from safetensors.torch import save_file

    src = root / "src"
    (src / "data").mkdir(parents=True)
    (src / "model").mkdir()
    table = pa.table({"id": [f"r{i}" for i in range(200)], "text": [f"row {i}" for i in range(200)],
                      "p1": [i / 200 for i in range(200)]})
    pq.write_table(table, src / "data" / "part-0.parquet")
    save_file({"weight": torch.arange(8, dtype=torch.float32).reshape(2, 4)}, str(src / "model" / "head.safetensors"))
    (src / "model" / "classifier.json").write_text(json.dumps({"pooling": "mean"}))
    return src


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(path: Path, how: str) -> None:
    if how == "flip":
        _flip(path)
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:-1])
    elif how == "extend":
        path.write_bytes(path.read_bytes() + b"\0")
    elif how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00\x01 not json")
    elif how == "non-utf8":
        data = bytearray(path.read_bytes())
        data[1] = 0xFF
        path.write_bytes(bytes(data))
    elif how == "lying-size":
        m = json.loads(path.read_text())
        m["files"]["data/part-0.parquet"]["size"] += 1
        path.write_text(json.dumps(m))
    elif how == "lying-sha":
        m = json.loads(path.read_text())
        m["files"]["model/head.safetensors"]["sha256"] = "0" * 64
        path.write_text(json.dumps(m))
    else:
        raise ValueError(how)


DAMAGES = [
    ("data/part-0.parquet", "flip", "data/part-0.parquet fails its checksum"),
    ("data/part-0.parquet", "truncate", "data/part-0.parquet is missing or truncated"),
    ("data/part-0.parquet", "delete", "data/part-0.parquet is missing or truncated"),
    ("model/head.safetensors", "flip", "model/head.safetensors fails its checksum"),
    ("model/head.safetensors", "truncate", "model/head.safetensors is missing or truncated"),
    ("model/head.safetensors", "extend", "model/head.safetensors is missing or truncated"),
    ("model/head.safetensors", "empty", "model/head.safetensors is missing or truncated"),
    (MANIFEST, "truncate", "unreadable manifest"),
    (MANIFEST, "empty", "unreadable manifest"),
    (MANIFEST, "garbage", "unreadable manifest"),
    (MANIFEST, "non-utf8", "unreadable manifest"),
    (MANIFEST, "lying-size", "data/part-0.parquet is missing or truncated"),
    (MANIFEST, "lying-sha", "model/head.safetensors fails its checksum"),
]


@pytest.mark.parametrize("target,how,words", DAMAGES, ids=[
    f"{p.values[0] if hasattr(p, 'values') else p[0]}-{p.values[1] if hasattr(p, 'values') else p[1]}"
    for p in DAMAGES])
def test_damaged_artifact_reads_as_absent_with_a_warning_and_is_rebuilt(target, how, words, tmp_path, caplog):
    src = _real_artifact(tmp_path)
    store = ArtifactStore(str(tmp_path / "store"))
    first = store.commit(KEY, src, {"stage": "labels", "seconds": 1.0})
    _damage(Path(store.path(KEY, target)), how)
    fresh = ArtifactStore(store.uri)
    with caplog.at_level(logging.WARNING, logger=ARTIFACT_LOG):
        assert not fresh.exists(KEY)
        assert fresh.manifest(KEY) is None
    assert any(r.name == ARTIFACT_LOG and r.levelno == logging.WARNING and f"artifact {KEY}: {words}" in r.getMessage()
               for r in caplog.records), caplog.text
    again = fresh.commit(KEY, src, {"stage": "labels", "seconds": 2.0})  # the recompute
    assert fresh.exists(KEY) and again.files == first.files and fresh.manifest(KEY).meta["seconds"] == 2.0
    assert pq.read_table(fresh.path(KEY, "data/part-0.parquet")).equals(pq.read_table(src / "data/part-0.parquet"))
    assert Path(fresh.path(KEY, "model/head.safetensors")).read_bytes() == \
        (src / "model" / "head.safetensors").read_bytes()
    assert [e["key"] for e in fresh.ledger()] == [KEY, KEY]  # built twice, recorded twice
    assert not list((tmp_path / "store" / "tmp").iterdir())  # the broken copy went with the swap
    assert [p.name for p in (tmp_path / "store" / "objects").iterdir()] == [KEY]


def test_an_intact_artifact_gives_no_warning(tmp_path, caplog):
    store = ArtifactStore(str(tmp_path / "store"))
    store.commit(KEY, _real_artifact(tmp_path), {})
    with caplog.at_level(logging.WARNING, logger=ARTIFACT_LOG):
        assert ArtifactStore(store.uri).exists(KEY)
    assert not [r for r in caplog.records if r.name == ARTIFACT_LOG]


# -- end to end on Ray -------------------------------------------------------------------------

EPOCHS = PIPELINE_EPOCHS
CFG = pipeline_config()
RESOURCES = Resources(max_concurrent_trials=2, max_failures=1)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Capture:
    """The artifact store's warnings while a block runs (caplog is per test; this fixture spans the module)."""

    def __enter__(self) -> list[str]:
        self.logger = logging.getLogger(ARTIFACT_LOG)
        self.handler, self.level = _Records(), self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.WARNING)
        return self.handler.messages

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _dashboard() -> str:
    import ray._private.worker as worker

    url = worker.get_dashboard_url()
    return url if "://" in url else f"http://{url}"


def _train_worker_pids() -> list[int]:
    """PIDs of this cluster's live Ray Train workers: our raylet's process tree (fast, local), else the State API."""
    import psutil
    import ray._private.worker as worker

    found = []
    for info in worker._global_node.all_processes.get("raylet", []):
        try:
            children = psutil.Process(info.process.pid).children(recursive=True)
        except psutil.Error:
            continue
        for p in children:
            try:
                if "RayTrainWorker" in " ".join(p.cmdline()):
                    found.append(p.pid)
            except psutil.Error:
                continue
    if found:
        return found
    try:
        from ray.util.state import list_actors

        actors = list_actors(address=_dashboard(), detail=True, timeout=30, raise_on_missing_output=False,
                             filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        return [a.pid for a in actors if a.pid]
    except Exception:  # noqa: BLE001  (a busy dashboard on 2 cores: poll again)
        return []


def _is_train_worker(pid: int) -> bool:
    import psutil

    try:
        return "RayTrainWorker" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


class WorkerKiller(threading.Thread):
    """SIGKILLs the stage's Train worker once Train has registered its first epoch checkpoint."""

    def __init__(self, run_dir: Path, store: ArtifactStore, key: str, timeout: float = 900):
        super().__init__(daemon=True)
        self.run_dir, self.store, self.key, self.timeout = run_dir, store, key, timeout
        self.stale = set(_train_worker_pids())  # workers of earlier runs that have not exited yet
        self.info: dict[str, Any] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # noqa: BLE001  (the main thread reports whatever the scenario raised)
            self.info["error"] = traceback.format_exc()

    def _registered_checkpoint(self) -> Path | None:
        """The checkpoint Train's checkpoint manager has recorded (its snapshot is written on registration)."""
        snapshot = self.run_dir / "checkpoint_manager_snapshot.json"
        try:
            state = json.loads(snapshot.read_text())
            name = (state.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        except (OSError, ValueError):
            return None
        if not name:
            return None
        path = self.run_dir / name.strip("/")
        return path if (path / "history.json").is_file() else None

    def _run(self) -> None:
        deadline = time.time() + self.timeout
        pid = None
        while time.time() < deadline and not self.stop.is_set():
            if pid is None and self.run_dir.is_dir():
                pids = [p for p in _train_worker_pids() if p not in self.stale and _is_train_worker(p)]
                pid = pids[0] if len(pids) == 1 else None
                self.info["workers_seen"] = pids
            checkpoint = self._registered_checkpoint()
            if checkpoint is not None and pid is not None:
                try:
                    history = json.loads((checkpoint / "history.json").read_text())
                except (OSError, ValueError):
                    continue
                committed = self.store.manifest(self.key, verify=False) is not None
                os.kill(pid, signal.SIGKILL)
                self.info.update(pid=pid, checkpoint=checkpoint.name, history=history, committed=committed,
                                 at=time.time())
                for _ in range(300):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
                self.info["died"] = not Path(f"/proc/{pid}").exists()
                return
            time.sleep(0.05)
        self.info.setdefault("error", f"no registered checkpoint and single worker seen before timeout: {self.info}")


def _step(res: dict, name: str, fn) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    except Exception:  # noqa: BLE001  (every later check reports what failed here)
        res.setdefault("errors", {})[name] = traceback.format_exc()
        return None
    finally:
        res.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)


def _labels(store: ArtifactStore, key: str):
    return pq.read_table(store.path(key, "data")).to_pandas().sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(pipeline_run, tmp_path_factory):
    from w2s_ray.engine.scheduler import execute
    from w2s_ray.results import cell_row

    root = tmp_path_factory.mktemp("reliability")
    plan = plan_experiment(CFG)
    cell = plan.cells[0]
    res: dict[str, Any] = {"plan": plan, "cell": cell}

    # 1. undisturbed run: the shared pipeline run, copied (store and Train runs) so it can be damaged here
    shutil.copytree(pipeline_run.out, root / "a")
    a = ArtifactStore(str(root / "a" / "store"))
    res["a"] = a
    res["a1"] = pipeline_run.report
    assert set(pipeline_run.plan.stages) == set(plan.stages)
    res["row_a"] = cell_row(a, cell)
    res["manifests_a"] = {k: a.manifest(k) for k in plan.stages}
    res["labels_a"] = _labels(a, cell.weak_labels)

    # 2. store B starts from A's upstream artifacts
    b = ArtifactStore(str(root / "b" / "store"))
    res["b"] = b
    for key in plan.stages:
        if key not in (cell.student, cell.student_test):
            shutil.copytree(a.path(key), Path(b.root) / "objects" / key)

    # 3. damage two committed artifacts in A and re-run
    labels_file = sorted(Path(a.path(cell.weak_labels, "data")).glob("*.parquet"))[0]
    res["labels_file"] = labels_file.relative_to(a.path(cell.weak_labels)).as_posix()
    _flip(labels_file)
    head = Path(a.path(cell.student, "model", "head.safetensors"))
    head.write_bytes(head.read_bytes()[:-1])
    with _Capture() as warnings:
        res["a2"] = _step(res, "a2", lambda: execute(plan, a, RESOURCES, str(root / "a" / "ray"),
                                                     progress=lambda s: None))
    res["warnings_a2"] = list(warnings)
    if res["a2"] is not None:
        res["row_a2"] = cell_row(a, cell)

    # 4. SIGKILL the student's Train worker in B once its first checkpoint is registered
    killer = WorkerKiller(root / "b" / "ray" / cell.student, b, cell.student)
    killer.start()
    lines: list[str] = []
    res["b1"] = _step(res, "b1", lambda: execute(plan, b, RESOURCES, str(root / "b" / "ray"), progress=lines.append))
    killer.stop.set()
    killer.join(timeout=60)
    res["kill"], res["lines_b"] = killer.info, lines
    if res["b1"] is not None:
        res["row_b"] = cell_row(b, cell)
    print(f"\nreliability steps (s): {res['seconds']}; kill: "
          f"{ {k: v for k, v in killer.info.items() if k != 'history'} }; "
          f"epochs checkpointed at the kill: {[h['epoch'] for h in killer.info.get('history', [])]}")
    return res


def _ok(runs: dict, *steps: str) -> None:
    errors = {k: v for k, v in runs.get("errors", {}).items() if k in steps}
    assert not errors, "\n".join(f"{k}:\n{v}" for k, v in errors.items())
    for s in steps:
        assert runs.get(s) is not None, f"step {s} did not run"


def _comparable(row: dict) -> dict:
    """A results row without wall times; NaN made comparable."""
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()
            if not k.endswith("_seconds")}


@pytest.mark.ray
def test_undisturbed_run_commits_every_stage_once(runs):
    _ok(runs, "a1")
    plan, _a = runs["plan"], runs["a"]
    assert set(runs["a1"].ran) == set(plan.stages) and not runs["a1"].cached
    for key, stage in plan.stages.items():
        if stage.kind == "train":
            assert [h["epoch"] for h in runs["manifests_a"][key].meta["history"]] == list(range(1, EPOCHS + 1))


@pytest.mark.ray
def test_damaged_artifacts_are_rebuilt_and_nothing_upstream_reruns(runs):
    _ok(runs, "a1", "a2")
    plan, cell, a = runs["plan"], runs["cell"], runs["a"]
    damaged = {cell.weak_labels, cell.student}
    assert set(runs["a2"].ran) == damaged, {plan.stages[k].name for k in runs["a2"].ran}
    assert set(runs["a2"].cached) == set(plan.stages) - damaged
    warnings = runs["warnings_a2"]
    bad_labels = f"artifact {cell.weak_labels}: {runs['labels_file']} fails its checksum"
    assert any(bad_labels in w for w in warnings), warnings
    assert any(f"artifact {cell.student}: model/head.safetensors is missing or truncated" in w for w in warnings), \
        warnings
    assert not [w for w in warnings if not any(k in w for k in damaged)], warnings  # nothing else was doubted
    counts = collections.Counter(e["key"] for e in a.ledger())
    assert counts == {k: 2 if k in damaged else 1 for k in plan.stages}, counts
    for key in plan.stages:  # every artifact verifies again
        assert a.exists(key), plan.stages[key].name


@pytest.mark.ray
def test_rebuilt_artifacts_match_the_originals(runs):
    _ok(runs, "a1", "a2")
    cell, a = runs["cell"], runs["a"]
    before, after = runs["manifests_a"][cell.student], a.manifest(cell.student)
    # the student is re-committed from its Train run's last checkpoint (no epoch left to train): same weights
    assert after.files["model/head.safetensors"] == before.files["model/head.safetensors"]
    assert after.meta["history"] == before.meta["history"]
    labels = _labels(a, cell.weak_labels)
    old = runs["labels_a"]
    assert list(labels["id"]) == list(old["id"]) and list(labels["text"]) == list(old["text"])
    assert (labels["p1"] - old["p1"]).abs().max() <= 1e-6  # the same weak model labels the same rows alike
    assert _comparable(runs["row_a2"]) == _comparable(runs["row_a"])


@pytest.mark.ray
def test_sigkilled_train_worker_resumes_from_its_checkpoint(runs):
    kill = runs["kill"]
    assert "error" not in kill, f"{kill.get('error')}\n" + "\n".join(runs["lines_b"])
    assert kill.get("died"), kill
    assert not kill["committed"], "the kill came after the student had committed"
    saved = [h["epoch"] for h in kill["history"]]
    assert saved and saved == list(range(1, len(saved) + 1)) and len(saved) < EPOCHS, saved
    _ok(runs, "b1")
    _plan, cell, b = runs["plan"], runs["cell"], runs["b"]
    assert set(runs["b1"].ran) == {cell.student, cell.student_test}
    history = b.manifest(cell.student).meta["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))  # each epoch once: resumed, not restarted
    # the epochs before the kill come from the checkpoint as recorded then (a restart would re-time them)
    assert history[:len(saved)] == kill["history"]
    counts = collections.Counter(e["key"] for e in b.ledger())
    assert counts == {cell.student: 1, cell.student_test: 1}, counts


@pytest.mark.ray
def test_resumed_run_gives_the_undisturbed_results(runs):
    _ok(runs, "a1", "b1")
    cell = runs["cell"]
    a_hist = runs["manifests_a"][cell.student].meta["history"]
    b_hist = runs["b"].manifest(cell.student).meta["history"]
    same = ("epoch", "step", "samples", "alpha")
    assert [{k: h[k] for k in same} for h in b_hist] == [{k: h[k] for k in same} for h in a_hist]
    row_a, row_b = _comparable(runs["row_a"]), _comparable(runs["row_b"])
    for col in ("student_acc", "student_auroc", "weak_acc", "ceiling_acc", "agreement", "pgr"):
        assert row_b[col] == row_a[col], (col, row_a[col], row_b[col])
    assert row_b == row_a


@pytest.mark.ray
def test_resume_is_bit_exact(runs):
    """Weights and per-epoch losses after the resume equal the undisturbed run's (RNG, data order, optimizer
    and schedule all come back from the checkpoint)."""
    _ok(runs, "a1", "b1")
    cell = runs["cell"]
    a_m, b_m = runs["manifests_a"][cell.student], runs["b"].manifest(cell.student)
    assert [h["train_loss"] for h in b_m.meta["history"]] == [h["train_loss"] for h in a_m.meta["history"]]
    assert b_m.files["model/head.safetensors"] == a_m.files["model/head.safetensors"]
    # every file but history.json, which records per-epoch wall times (epoch_s, samples_per_s)
    assert {k: v for k, v in b_m.files.items() if k != "history.json"} == \
        {k: v for k, v in a_m.files.items() if k != "history.json"}
