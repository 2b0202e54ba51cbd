"""The dataflow scheduler: its rules without Ray (thread runners), then real-Ray runs.

Pure rules: a stage starts only once its inputs are committed and the pools
have room; a failure blocks exactly the stages downstream of it and nothing
else; the longest remaining path goes first; thread counts are a function of
the plan and the resources profile. Real Ray: the pipeline's timeline, a
sweep whose one cell has corrupt weights, and clean-up that touches only the
run's own cluster and job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.config import Resources
from w2s_ray.engine.dataflow import Dataflow, Pools, State, stage_threads
from w2s_ray.engine.scheduler import Scheduler
from w2s_ray.plan import Plan
from w2s_ray.stages import KINDS, Stage, StageContext, StageKind, register, unregister
from w2s_ray.stages.base import cores_request


@dataclass(frozen=True)
class ToyParams:
    i: int


def _unused(stage: Stage, ctx: StageContext) -> dict:
    raise AssertionError("each test installs its own runner")


# A kind of stage this file alone defines: the engine runs it like any built-in kind.
TOY = StageKind("toy", "a test's stage: one thread, one core", ToyParams, _unused, where="thread", threads="one",
                request=cores_request)


@pytest.fixture(autouse=True)
def toy_kind():
    register(TOY)
    yield
    unregister("toy")


def toy_plan(edges: list[list[int]]) -> Plan:
    """Stage i reads the stages in ``edges[i]`` (all < i): toy stages, so no Ray and no data are needed."""
    plan = Plan()
    keys: list[str] = []
    for i, deps in enumerate(edges):
        keys.append(plan.add(TOY.make(f"stage {i}", {"i": i}, {f"in{j}": keys[j] for j in deps}, "toy")).key)
    return plan


def descendants(plan: Plan, roots: set[str]) -> set[str]:
    out: set[str] = set()
    for key, stage in plan.stages.items():  # insertion order is topological
        if any(d in roots or d in out for d in stage.deps):
            out.add(key)
    return out


class Recorder:
    """A toy kind's runner that commits nothing, fails where told, and records how many ran at once."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.lock, self.now, self.peak, self.order = threading.Lock(), 0, 0, []

    def run(self, stage: Stage, ctx: StageContext) -> dict:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.order.append(stage.key)
        time.sleep(0.01)
        with self.lock:
            self.now -= 1
        if stage.key in self.failing:
            raise ValueError(f"injected failure of {stage.name}")
        return {"seconds": 0.01, "rows": 1}


def run_toy(tmp_path: Path, plan: Plan, failing: set[str], describe=lambda s, m: "ran",
            progress=lambda _: None) -> tuple[Scheduler, Recorder]:
    rec = Recorder(failing)
    KINDS["toy"] = replace(TOY, run=rec.run, describe=describe)
    sched = Scheduler(plan, ArtifactStore(str(tmp_path / "store")), Resources(), str(tmp_path / "ray"), progress)
    sched.wait()
    return sched, rec


def test_a_kind_defined_in_one_file_runs_through_the_engine(tmp_path):
    """The toy kind above: registered, planned, scheduled, described; its typed parameters refuse a typo."""
    plan = toy_plan([[], [0], [0, 1]])
    lines: list[str] = []
    sched, rec = run_toy(tmp_path, plan, set(), describe=lambda s, m: f"toy {s.typed.i} ran", progress=lines.append)
    assert rec.order == list(plan.stages) and set(sched.report.ran) == set(plan.stages)
    assert [ln.split("] ", 1)[1] for ln in lines] == [f"stage {i}: toy {i} ran (0.0s)" for i in range(3)]
    with pytest.raises(ValueError, match="a toy stage has no parameter 'j'"):
        TOY.make("typo", {"i": 1, "j": 2}, {}, "toy")
    with pytest.raises(ValueError, match="already registered"):
        register(replace(TOY, doc="another toy"))


def test_a_builtin_builder_refuses_a_parameter_its_kind_does_not_have():
    from w2s_ray.stages.training import TRAIN

    with pytest.raises(ValueError, match="a train stage has no parameter 'epoch'"):
        TRAIN.make("typo", {"model": {}, "train": {}, "loss": {}, "split": "A", "targets": "gt", "epoch": 2}, {}, "")
    with pytest.raises(TypeError, match="targets"):
        TRAIN.make("missing", {"model": {}, "train": {}, "loss": {}, "split": "A"}, {}, "")


def test_a_progress_line_that_fails_to_format_never_stops_the_run(tmp_path):
    """A kind's ``describe`` reading a key the meta lacks once stopped a whole sweep: now the line says so."""
    plan = toy_plan([[], [0]])
    lines: list[str] = []
    sched, _ = run_toy(tmp_path, plan, set(), describe=lambda s, m: m["history"][-1], progress=lines.append)
    assert set(sched.report.ran) == set(plan.stages) and not sched.report.failed
    assert sum("its description failed: KeyError" in line for line in lines) == 2


dags = st.integers(1, 14).flatmap(lambda n: st.tuples(*[
    st.lists(st.integers(0, max(i - 1, 0)), max_size=min(i, 3), unique=True) if i else st.just([])
    for i in range(n)]))


@settings(max_examples=40, deadline=None)
@given(edges=dags, data=st.data())
def test_a_failure_blocks_exactly_its_dependents_and_everything_else_runs(tmp_path_factory, edges, data):
    plan = toy_plan([list(e) for e in edges])
    keys = list(plan.stages)
    failing = set(data.draw(st.lists(st.sampled_from(keys), max_size=2)))
    sched, rec = run_toy(tmp_path_factory.mktemp("toy"), plan, failing)
    blocked = descendants(plan, failing)  # downstream of a failure: never started, even one that would fail too
    ran = set(rec.order)
    assert sched.flow.finished
    assert set(sched.report.blocked) == blocked and not (blocked & ran)
    assert set(sched.report.failed) == failing - blocked == failing & ran
    assert set(sched.report.ran) == set(keys) - failing - blocked  # every independent stage finished
    assert all("injected failure" in cause for cause in sched.report.failed.values())
    assert rec.peak <= (os.cpu_count() or 1)  # one core per head: the cores pool is never exceeded
    for i, key in enumerate(rec.order):  # a stage starts only after its inputs finished
        assert all(d in rec.order[:i] for d in plan.stages[key].deps)


def test_the_longest_remaining_path_starts_first():
    plan = toy_plan([[], [], [0], [2]])  # 0 -> 2 -> 3 is longer than 1 alone
    keys = list(plan.stages)
    flow = Dataflow(plan, committed=set(), cost=dict.fromkeys(keys, 1.0))
    assert [s.key for s in flow.ready()] == [keys[0], keys[1]]
    flow = Dataflow(plan, committed=set(), cost={keys[1]: 10.0})
    assert [s.key for s in flow.ready()] == [keys[1], keys[0]]
    flow = Dataflow(plan, committed={keys[0]}, cost={})  # a committed input counts as done
    assert {s.key for s in flow.ready()} == {keys[1], keys[2]} and flow.state[keys[0]] == State.CACHED


REQUESTS = [{}, {"a": 1.0}, {"a": 2.0}, {"b": 1.0}, {"a": 1.0, "b": 1.0}]


@settings(max_examples=60, deadline=None)
@given(edges=dags, data=st.data())
def test_picking_from_one_heap_per_request_starts_what_a_scan_in_priority_order_would(edges, data):
    """The scheduler's pick looks at heap heads only; in every round it starts exactly the stages a scan of
    all ready stages, longest path first, starting each that fits, would."""
    plan = toy_plan([list(e) for e in edges])
    requests = {k: data.draw(st.sampled_from(REQUESTS)) for k in plan.stages}
    cost = {k: data.draw(st.sampled_from([0.0, 1.0, 2.5, 7.0])) for k in plan.stages}
    flow, pools = Dataflow(plan, set(), cost, requests), Pools({"a": 2.0, "b": 1.0})
    while not flow.finished:
        scan, expected = Pools(dict(pools.capacity)), []
        for s in flow.ready():
            if scan.fits(requests[s.key]):
                scan.take(requests[s.key])
                expected.append(s.key)
        started = []
        while (key := flow.pick(pools.fits)) is not None:
            pools.take(requests[key])
            flow.start(key)
            started.append(key)
        assert started == expected and started
        for key in started:
            flow.done(key)
            pools.give(requests[key])
    assert flow.counts()[State.DONE] == len(plan.stages)


def test_thread_counts_are_set_by_the_plan_and_profile_not_the_schedule():
    """Weak model alone in its layer: every core; ceiling beside student: half each; Ray Data jobs: every core."""
    from w2s_ray.config import ExperimentConfig
    from w2s_ray.plan import plan_experiment

    plan = plan_experiment(ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6"))
    by_role = {s.role: s.key for s in plan.stages.values()}
    threads = stage_threads(plan, Resources(max_concurrent_trials=2), cores=8)
    assert [threads[by_role[r]] for r in ("weak", "ceiling", "student", "labels")] == [8, 4, 4, 8]
    assert stage_threads(plan, Resources(max_concurrent_trials=1), cores=8)[by_role["ceiling"]] == 8
    assert set(stage_threads(plan, Resources(torch_threads=3), cores=8).values()) == {3}


@pytest.mark.ray
def test_pipeline_timeline_student_after_its_labels(pipeline_run):
    """The shared pipeline run: labels start after the weak model, the student after its labels; threads per layer."""
    plan, report, store = pipeline_run.plan, pipeline_run.report, pipeline_run.store
    by_role = {s.role: s for s in plan.stages.values()}
    phases = {what: (start, end) for what, start, end in report.phases}
    assert phases[by_role["labels"].name][0] >= phases[by_role["weak"].name][1]
    assert phases[by_role["student"].name][0] >= phases[by_role["labels"].name][1]
    assert not report.failed and not report.blocked
    cores = os.cpu_count() or 1
    threads = {role: store.manifest(by_role[role].key).meta["torch_threads"] for role in ("weak", "ceiling", "student")}
    assert threads == {"weak": cores, "ceiling": max(1, cores // 2), "student": max(1, cores // 2)}


@pytest.mark.ray
def test_a_cell_with_corrupt_weights_fails_alone_and_the_other_cell_is_reported(ray_cluster, tmp_path):
    """Two cells share a ceiling; one weak model's safetensors are random bytes. The run ends (no hang),
    names the cause once, blocks only that cell's stages, and writes the healthy cell's row."""
    import shutil

    import pandas as pd

    from w2s_ray.config import ExperimentConfig, LossConfig, SplitConfig, TrainOverrides
    from w2s_ray.offline import minilm_l6_path
    from w2s_ray.plan import plan_experiments
    from w2s_ray.sweep import Layout, run_plan

    broken = tmp_path / "broken"
    shutil.copytree(minilm_l6_path(), broken)
    (broken / "model.safetensors").write_bytes(os.urandom(4096))
    split = SplitConfig(seed=0, n_weak=64, n_strong=64, n_test=64)
    train = TrainOverrides(epochs=1, max_len=16, batch_size=16, minibatch_size=16)
    cells = [ExperimentConfig("vader", weak, "minilm-l6-2l", LossConfig("xent"), split, train)
             for weak in (str(broken), "minilm-l6-1l")]
    plan = plan_experiments(cells)
    lines: list[str] = []
    t0 = time.monotonic()
    result = run_plan(plan, Layout.of(tmp_path / "out", "failiso"), Resources(max_concurrent_trials=2,
                      max_failures=0), {"command": "test"}, progress=lines.append, report=False)
    assert time.monotonic() - t0 < 420
    assert not result.ok and len(result.failed) == 1
    (name, cause), = result.failed.items()
    assert name.startswith("weak broken on A") and "safetensor" in cause.lower(), cause
    assert sum("FAILED" in ln for ln in lines) == 1  # named once, with the trial log
    assert any("FAILED" in ln and "trial log:" in ln for ln in lines)
    rows = pd.read_csv(result.paths["csv"])
    assert list(rows["status"]) == ["failed", "ok"]
    assert "safetensor" in rows["reason"][0].lower() and rows["student_acc"].notna().tolist() == [False, True]
    assert result.blocked == 4  # the broken cell's labels, weak predictions, student and its predictions
    assert result.stages_run == 14 - 1 - 4  # every other stage ran, the shared rows and ceiling included


@pytest.mark.ray
def test_placement_group_clean_up_touches_only_this_run(ray_cluster, tmp_path):
    """With a second local Ray cluster on the machine and another job on ours, the clean-up still talks to
    our cluster only and removes only our own orphaned group, never the other job's."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from w2s_ray.runtime import cluster_address, release_orphan_placement_groups

    other_cluster = subprocess.Popen([sys.executable, "-c", "import ray, time; ray.init(num_cpus=1, "
                                      "include_dashboard=False); print('up', flush=True); time.sleep(300)"],
                                     stdout=subprocess.PIPE, text=True)
    other_job = subprocess.Popen([sys.executable, "-c", "import ray, time; from ray.util.placement_group import "
                                  f"placement_group; ray.init(address={cluster_address()!r}); "
                                  "pg = placement_group([{'CPU': 0.01}]); ray.get(pg.ready()); "
                                  "print(pg.id.hex(), flush=True); time.sleep(300)"],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert other_cluster.stdout.readline().strip() == "up"
        theirs = other_job.stdout.readline().strip()
        ours = placement_group([{"CPU": 0.01}])
        ray.get(ours.ready())
        released = release_orphan_placement_groups(min_age_s=0)
        assert ours.id.hex() in released and theirs not in released
        assert placement_group_table()[theirs]["state"] == "CREATED"
    finally:
        other_job.kill()
        other_cluster.kill()


@pytest.mark.ray
def test_two_runs_with_alpha_searches_on_one_machine_both_succeed(tmp_path):
    """Two ``w2s-ray sweep`` processes at once, each with its own local Ray cluster and a probe-mode alpha
    search (Tune + the placement-group clean-up, which reads the State API): neither sees the other."""
    spec = tmp_path / "two.yaml"
    spec.write_text(
        "name: two\ndatasets: [vader]\nmodels: [minilm-l6-1l, minilm-l6-2l]\npairs: weak<strong\n"
        "losses: [logconf]\nalpha_max: [0.5]\nwarmup_frac: [0.2]\nseeds: [0]\n"
        "split: {n_weak: 64, n_strong: 64, n_test: 64, n_val: 32}\ntrain: {max_len: 16}\nfinetune: probe\n"
        "probe: {epochs: 2, batch_size: 16}\n"
        "search: {objectives: [weak], num_samples: 2, max_concurrent: 1, grace_period: 1}\n")
    cli = Path(sys.executable).with_name("w2s-ray")
    env = {**os.environ, "RAY_ADDRESS": ""}  # each starts its own cluster, whatever else runs here
    runs = []
    for name in ("a", "b"):
        runs.append(subprocess.Popen([str(cli), "sweep", str(spec), "--out", str(tmp_path / name)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(3)  # the second starts while the first is starting its cluster
    for run in runs:
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out[-3000:]
        assert "done, 0 failed, 0 blocked;" in out, out[-3000:]


def test_a_training_retries_once_per_failure_budget_not_tune_times_train():
    """Train's FailureConfig resumes a fine-tuning from its checkpoint; Tune must not retry the trial on top
    (that ran a deterministic error (1 + m)^2 times). A search's heads have no Train run: Tune retries those."""
    from w2s_ray.search import _trial_retries
    from w2s_ray.stages.search import SEARCH

    resources = Resources(max_failures=3)
    base = {"model": {}, "loss": {"name": "logconf"}, "split": "B", "targets": "weak", "search": {}}
    full = SEARCH.make("full", {**base, "train": {}}, {}, "search")
    probe = SEARCH.make("probe", {**base, "probe": {}, "seed": 0, "finetune": "probe"}, {}, "search")
    assert _trial_retries(full, resources) == 0 and _trial_retries(probe, resources) == 3
