"""The executor's overlap of Ray Data jobs with trainings, on a real local Ray cluster.

Data jobs (weak labels, predictions) run in a driver thread while trainings
launch and train; a trial waits on the run's board for the jobs it reads and
for the trainings of the layer before its own.
"""

from __future__ import annotations

import threading
import time

import pytest

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources

pytestmark = pytest.mark.ray


def test_wait_for_inputs_returns_once_every_key_is_marked(ray_cluster):
    import ray

    from w2s_ray.execute import _new_board, wait_for_inputs

    board = _new_board()
    try:
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (wait_for_inputs(board, ["a", "b"], poll_s=0.05), done.set()))
        waiter.start()
        ray.get(board.mark.remote("a"))
        assert not done.wait(0.5)  # "b" is still missing
        ray.get(board.mark.remote("b"))
        assert done.wait(10)
        assert ray.get(board.committed_among.remote(["b", "c", "a"])) == ["b", "a"]
        wait_for_inputs(board, [])  # nothing to wait for: returns at once
    finally:
        ray.kill(board)


def test_trainings_keep_their_layers_and_the_student_trains_only_after_its_labels(pipeline_run):
    """The timeline of the shared pipeline run: one Tune experiment, but the ceiling and the student (one
    layer, one thread count) start only after the weak model, and the student only after its labels."""
    import os

    plan, report, store = pipeline_run.plan, pipeline_run.report, pipeline_run.store
    by_role = {s.role: s for s in plan.stages.values()}
    phases = {what: (start, end) for what, start, end in report.phases}
    _, weak_end = phases[by_role["weak"].name]
    labels_start, labels_end = phases[by_role["labels"].name]
    slack = 0.5  # the clocks are read in two processes
    assert labels_start >= weak_end - slack
    assert phases[by_role["ceiling"].name][0] >= weak_end - slack
    student_start, student_end = phases[by_role["student"].name]
    assert labels_end - slack <= student_start < student_end
    cores = os.cpu_count() or 1
    threads = {role: store.manifest(by_role[role].key).meta["torch_threads"] for role in ("weak", "ceiling", "student")}
    assert threads == {"weak": cores, "ceiling": max(1, cores // 2), "student": max(1, cores // 2)}


def test_a_failed_labels_job_stops_the_waiting_student(pipeline_run, monkeypatch, tmp_path):
    """The student trial waits for its weak labels; when that job fails, execute() raises the job's own error
    promptly (the Tune experiment is stopped, not left waiting) and the student is never trained."""
    from w2s_ray import execute as executor

    plan, store = pipeline_run.plan, pipeline_run.store
    by_role = {s.role: s for s in plan.stages.values()}
    scratch = ArtifactStore(str(tmp_path / "store"))
    for role in ("weak", "ceiling"):  # only the labels, the student and the predictions are left to run
        for key in (by_role[role].key, by_role[role].inputs["data"]):
            if not scratch.exists(key):
                scratch.commit(key, store.local_dir(key), store.manifest(key).meta)
    real = executor._run_data_job

    def labels_fail(stage, st, resources):  # noqa: ANN001
        if stage.role == "labels":
            time.sleep(2)  # the student's trial is waiting by now
            raise RuntimeError("injected failure of the labels job")
        return real(stage, st, resources)

    monkeypatch.setattr(executor, "_run_data_job", labels_fail)
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="injected failure of the labels job"):
        executor.execute(plan, scratch, Resources(max_concurrent_trials=2), str(tmp_path / "ray"),
                         progress=lines.append)
    assert time.monotonic() - t0 < 120, lines
    assert not scratch.exists(by_role["student"].key) and not scratch.exists(by_role["labels"].key)
