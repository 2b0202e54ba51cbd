"""Sweeps end to end through the CLI on a real local Ray cluster with tiny real models.

One grid (2-model ladder, xent + logconf, so weak, labels and ceiling are
shared by two students) is interrupted with SIGINT once its first training
has committed, then re-run with the same command: the sweep completes, every
stage was trained exactly once (the store's commit ledger counts them), and
a third run trains nothing. Then the report is rebuilt from the results alone.
"""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from w2s_ray.artifacts import ArtifactStore
from w2s_ray.plan import plan_experiments
from w2s_ray.spec import load_spec

pytestmark = pytest.mark.ray

SPEC = {
    "name": "tiny",
    "datasets": ["vader"],
    "models": ["minilm-l6-1l", "minilm-l6-2l"],
    "pairs": "weak<strong",
    "losses": ["xent", "logconf"],
    "alpha_max": [0.5],
    "seeds": [0],
    "split": {"n_weak": 64, "n_strong": 64, "n_test": 64},
    "train": {"epochs": 2, "max_len": 32, "batch_size": 16},
    "resources": {"num_cpus": 4, "max_concurrent_trials": 2},
    "test_curves": True,  # students log GT test accuracy per epoch (analysis only)
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "w2s_ray.cli", *args]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, asset_home):
    root = tmp_path_factory.mktemp("sweep")
    spec_path = root / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    out = root / "out"
    store = ArtifactStore(str(out / "store"))
    plan = plan_experiments(load_spec(spec_path).experiments())
    train_keys = {k for k, s in plan.stages.items() if s.kind == "train"}

    # run 1: interrupted (SIGINT, as Ctrl-C) once the first training has committed
    proc = subprocess.Popen(_cli("sweep", str(spec_path), "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if out.joinpath("store", "ledger").is_dir() and any(
                e["key"] in train_keys for e in store.ledger()):
            break
        time.sleep(1)
    interrupted_at = {e["key"] for e in store.ledger()}
    proc.send_signal(signal.SIGINT)
    first_out, _ = proc.communicate(timeout=180)
    # run 2: the same command finishes the sweep
    second = subprocess.run(_cli("sweep", str(spec_path), "--out", str(out)), capture_output=True, text=True,
                            timeout=900)
    # run 3: everything is loaded
    third = subprocess.run(_cli("sweep", str(spec_path), "--out", str(out)), capture_output=True, text=True,
                           timeout=300)
    return {"out": out, "store": store, "plan": plan, "train_keys": train_keys, "first": (proc.returncode, first_out),
            "interrupted_at": interrupted_at, "second": second, "third": third}


def test_interrupted_sweep_resumes_and_trains_each_stage_once(sweep):
    code, text = sweep["first"]
    assert code == 130, text[-3000:]
    assert "re-run the same command to resume" in text
    assert sweep["interrupted_at"] & sweep["train_keys"], "the interrupt came before any training committed"
    second = sweep["second"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ledger = [e["key"] for e in sweep["store"].ledger()]
    trained = [k for k in ledger if k in sweep["train_keys"]]
    assert sorted(trained) == sorted(sweep["train_keys"])  # exactly the planned trainings, each once
    assert len(ledger) == len(set(ledger)) == len(sweep["plan"].stages)  # no stage of any kind built twice


def test_rerun_trains_nothing_and_prints_the_same_table(sweep):
    third = sweep["third"]
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"0 stage(s) run, {len(sweep['plan'].stages)} loaded" in third.stdout
    def table(out: str) -> str:  # the block before the summary line
        return out.split("\n\n")[-2]

    assert table(third.stdout) == table(sweep["second"].stdout)


def test_results_table_and_report(sweep):
    results = sweep["out"] / "sweeps" / "tiny"
    cells = pd.read_parquet(results / "results.parquet")
    assert len(cells) == len(sweep["plan"].cells) == 2
    assert set(cells["loss"]) == {"xent", "logconf"}
    assert cells["weak_key"].nunique() == 1 and cells["ceiling_key"].nunique() == 1  # shared stages
    for col in ("weak_acc", "student_acc", "ceiling_acc", "weak_auroc", "agreement", "student_seconds"):
        assert cells[col].notna().all(), col
    agg = pd.read_parquet(results / "aggregate.parquet")
    assert len(agg) == 2 and set(agg["n_seeds"]) == {1}
    assert pd.read_csv(results / "results.csv").shape[0] == 2
    curves = cells["student_gt_test_acc_by_epoch"]
    assert all(len(c) == SPEC["train"]["epochs"] and all(0 <= x <= 1 for x in c) for c in curves)
    assert (cells["student_best_acc"] >= cells["student_acc"] - 1e-9).all()  # the curve ends at the final model
    defined = cells["pgr"].notna()
    assert (cells.loc[defined, "pgr_best"] >= cells.loc[defined, "pgr"] - 1e-9).all()
    assert cells["finetune"].eq("full").all()
    for name in ("accuracy_vs_size.png", "pgr_heatmap.png", "pgr_by_loss.png", "pgr_vs_size.png", "agreement.png",
                 "training_curves.png"):
        assert (results / name).stat().st_size > 5000, name
    for f in results.glob("*.png"):
        f.unlink()
    rebuilt = subprocess.run(_cli("report", str(results)), capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (results / "pgr_heatmap.png").is_file()
    assert "![PGR over weak x strong](pgr_heatmap.png)" in (results / "report.md").read_text()


def test_plan_command_runs_nothing(sweep, tmp_path):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    res = subprocess.run(_cli("plan", str(spec_path)), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 cells" in res.stdout and "1 weak, 1 labels, 1 ceiling, 2 student" in res.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.yaml"]  # nothing started, nothing written
