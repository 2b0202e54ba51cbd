"""The real scheduler on a simulated GPU cluster: utilization against the lower bound, new order vs layer by layer.

The plan is the paper's NLP grid (``sweeps/paper-nlp.yaml``: GPT-2 ladder x 5
tasks x xent/logconf) with 5 seeds: 600 trainings, 1,395 stages. The
scheduler, Tune and Ray run for real on a local cluster whose logical GPUs
stand for the cluster's; only each stage's work is replaced (runners
injected here, no production flag): it sleeps for its cost estimate
(``StageKind.cost``) times one scale, chosen so that total work / GPUs
is ``--target`` seconds. Each training is a Tune trial (one GPU-slot);
inference and data stages sleep in driver threads.

Printed: makespan against the lower bound max(critical path, total work /
slots), as utilization; the driver's own time per stage; the same plan with
the old layer barriers (every stage waits for the whole previous layer of
:meth:`Plan.layers`), for comparison.

    .venv/bin/python benchmarks/simulated_cluster.py --gpus 16 --target 240
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from w2s_ray.artifacts import ArtifactStore, stage_key
from w2s_ray.config import Resources
from w2s_ray.engine.dataflow import stage_costs
from w2s_ray.engine.scheduler import execute
from w2s_ray.plan import Plan, plan_experiments
from w2s_ray.spec import load_spec
from w2s_ray.stages import KINDS, Stage, StageContext, StageKind

ROOT = Path(__file__).resolve().parent.parent


def paper_plan(seeds: int) -> Plan:
    raw = yaml.safe_load((ROOT / "sweeps" / "paper-nlp.yaml").read_text())
    raw["seeds"] = list(range(seeds))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(raw, f)
    return plan_experiments(load_spec(f.name).experiments())


def with_layer_barriers(plan: Plan) -> tuple[Plan, dict[str, str]]:
    """The same stages, each also waiting for a barrier after the whole previous layer (the old executor's order).

    → the barrier plan and each stage's new key (its inputs changed, so did its key)."""
    out, renamed, barrier = Plan(), {}, None
    for i, layer in enumerate(plan.layers()):
        for s in layer:
            inputs = {k: renamed[v] for k, v in s.inputs.items()} | ({"after": barrier} if barrier else {})
            renamed[s.key] = out.add(Stage(stage_key(s.kind, s.params, inputs), s.kind, s.name, s.params,
                                           inputs, s.role)).key
        params = {"layer": i}
        inputs = {f"s{j}": renamed[s.key] for j, s in enumerate(layer)}
        barrier = out.add(Stage(stage_key("barrier", params, inputs), "barrier", f"barrier {i}", params, inputs,
                                "barrier")).key
    out.cells = plan.cells
    return out, renamed


@dataclass(frozen=True)
class BarrierParams:
    layer: int


def sleep_instead(seconds: dict[str, float]) -> None:
    """Every kind sleeps its stage's simulated seconds; where it runs (trial, thread) stays the real one.

    This benchmark's process only: it replaces the registry's runners (and adds the barrier kind) in place.
    """
    def sleep(stage: Stage, ctx: StageContext) -> dict:
        time.sleep(seconds.get(stage.key, 0.0))
        return {"seconds": seconds.get(stage.key, 0.0), "rows": 0}

    for name, kind in list(KINDS.items()):
        KINDS[name] = replace(kind, run=sleep, where="trial" if kind.where == "trial" else "thread")
    KINDS["barrier"] = StageKind("barrier", "waits for a whole layer (the old order)", BarrierParams, sleep,
                                 lambda s, m: "passed")


def critical_path(plan: Plan, seconds: dict[str, float]) -> float:
    finish: dict[str, float] = {}
    for key, s in plan.stages.items():
        finish[key] = seconds.get(key, 0.0) + max((finish[d] for d in s.deps), default=0.0)
    return max(finish.values())


def simulate(plan: Plan, seconds: dict[str, float], gpus: int, address: str, label: str) -> dict[str, float]:
    work = sum(v for k, v in seconds.items() if plan.stages[k].kind == "train")
    bound = max(critical_path(plan, seconds), work / gpus)
    out = Path(tempfile.mkdtemp(prefix="w2s-sim-"))
    resources = Resources(address=address, max_concurrent_trials=gpus, trial_cpus=0.1, max_failures=0)
    t0 = time.perf_counter()
    sleep_instead(seconds)
    report = execute(plan, ArtifactStore(str(out / "store")), resources, str(out / "ray"), progress=lambda _: None)
    makespan = time.perf_counter() - t0
    stages = len(report.ran)
    assert not report.failed, report.failed
    names = {s.name: k for k, s in plan.stages.items() if s.kind == "train"}
    extra = [end - start - seconds[names[n]] for n, start, end in report.phases if n in names]
    print(f"{label:28} makespan {makespan:7.1f} s   bound {bound:7.1f} s   utilization {bound / makespan:5.2f}   "
          f"driver {1000 * report.driver_seconds / max(stages, 1):5.1f} ms/stage ({stages} stages); a training's "
          f"start-to-recorded time exceeds its work by {sum(extra) / max(len(extra), 1):.2f} s on average "
          f"(Tune trial launch, report, clean-up)", flush=True)
    return {"makespan": makespan, "bound": bound}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, default=16, help="simulated GPU slots (trials at once)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--target", type=float, default=240.0, help="seconds of training work per slot")
    p.add_argument("--no-old", action="store_true", help="skip the layer-by-layer comparison")
    a = p.parse_args()
    import ray

    plan = paper_plan(a.seeds)
    costs = stage_costs(plan)
    train_work = sum(c for k, c in costs.items() if plan.stages[k].kind == "train")
    scale = a.target * a.gpus / train_work
    seconds = {k: c * scale for k, c in costs.items()}
    trainings = sum(s.kind == "train" for s in plan.stages.values())
    print(f"plan: {len(plan.stages)} stages, {trainings} trainings (paper-nlp grid, {a.seeds} seeds); "
          f"{a.gpus} simulated GPUs; training sleeps "
          f"{min(seconds[k] for k in seconds if plan.stages[k].kind == 'train'):.1f}"
          f"-{max(seconds.values()):.1f} s (cost estimate x {scale:.3g})", flush=True)
    ray.init(num_cpus=a.gpus, num_gpus=a.gpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    address = ray.get_runtime_context().gcs_address
    new = simulate(plan, seconds, a.gpus, address, "dataflow scheduler")
    if a.no_old:
        return
    barrier_plan, renamed = with_layer_barriers(plan)
    old = simulate(barrier_plan, {renamed[k]: v for k, v in seconds.items()}, a.gpus, address,
                   "old layer-by-layer order")
    print(f"dataflow / layers makespan: {new['makespan'] / old['makespan']:.2f}")


if __name__ == "__main__":
    main()
