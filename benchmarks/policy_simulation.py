"""The scheduling policy at cluster scale, on a virtual clock: the real Dataflow, Pools and priority rule.

No Ray and no sleeps: simulated time jumps from one stage's end to the
next. The plan is the paper's NLP grid (``sweeps/paper-nlp.yaml``: GPT-2
ladder x 5 tasks) with more alpha values and seeds, so it holds 10,000+
stages. The resources are the spec's cluster profile at ``--gpus`` GPUs
(as many training slots and as many Ray Data job slots, the pools of
:func:`w2s_ray.engine.dataflow.pools_for`). A stage's simulated duration is
its cost estimate (``StageKind.cost``) times a lognormal factor (``--spread``,
the scatter of measured stage times around the estimate), so the priority
rule plans with estimates and the clock runs on "measurements".

Printed, per GPU count: makespan against the lower bound max(critical path,
work of each pool / its slots) as a ratio (goal >= 0.95); the driver's CPU
time per stage event (a start or an end: goal <= 1 ms); and the process's
peak memory (goal <= 1 GB). What only Ray can show (a trial's launch and
report overhead) is ``benchmarks/simulated_cluster.py``'s.

    .venv/bin/python benchmarks/policy_simulation.py --gpus 64 512
"""

from __future__ import annotations

import argparse
import heapq
import random
import resource
import tempfile
import time
from pathlib import Path

import yaml

from w2s_ray.config import Resources
from w2s_ray.engine.dataflow import Dataflow, State, pools_for, stage_costs, stage_requests, stage_threads
from w2s_ray.plan import Plan, plan_experiments
from w2s_ray.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
TFLOPS_PER_GPU = 100.0  # effective; scales every duration alike, so no ratio depends on it


def paper_plan(seeds: int, alphas: list[float]) -> Plan:
    raw = yaml.safe_load((ROOT / "sweeps" / "paper-nlp.yaml").read_text())
    raw["seeds"], raw["alpha_max"] = list(range(seeds)), alphas
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(raw, f)
    return plan_experiments(load_spec(f.name).experiments())


def durations(plan: Plan, costs: dict[str, float], spread: float, seed: int) -> dict[str, float]:
    """Virtual seconds per stage: the estimate at ``TFLOPS_PER_GPU`` times lognormal(0, spread)."""
    rng = random.Random(seed)
    return {k: costs[k] / TFLOPS_PER_GPU * rng.lognormvariate(0.0, spread) for k in plan.stages}


def lower_bound(plan: Plan, seconds: dict[str, float], requests: dict[str, dict], capacity: dict[str, float]) -> float:
    """max(critical path, each pool's slot-seconds over its slots): no schedule can beat it."""
    finish: dict[str, float] = {}
    for key, s in plan.stages.items():  # insertion order is topological
        finish[key] = seconds[key] + max((finish[d] for d in s.deps), default=0.0)
    work = dict.fromkeys(capacity, 0.0)
    for key, request in requests.items():
        for pool, amount in request.items():
            work[pool] += seconds[key] * amount
    return max(max(finish.values()), *(work[p] / capacity[p] for p in capacity))


def simulate(plan: Plan, gpus: int, spread: float, seed: int) -> dict[str, float]:
    """One run of the policy on a virtual clock; → makespan, bound, driver ms per event."""
    resources = Resources(address="ray://simulated", use_gpu=True, max_concurrent_trials=gpus)
    pools = pools_for(resources)
    requests = stage_requests(plan, stage_threads(plan, resources), resources, pools)
    costs = stage_costs(plan)
    seconds = durations(plan, costs, spread, seed)
    cpu0 = time.process_time()
    flow = Dataflow(plan, set(), costs, requests)
    setup = time.process_time() - cpu0
    clock, running, events = 0.0, [], 0

    def launch() -> None:
        nonlocal events
        while (key := flow.pick(pools.fits)) is not None:
            pools.take(requests[key])
            flow.start(key)
            heapq.heappush(running, (clock + seconds[key], flow.order[key], key))
            events += 1

    cpu0 = time.process_time()
    launch()
    while running:
        clock, _, key = heapq.heappop(running)
        flow.done(key)
        pools.give(requests[key])
        events += 1
        launch()
    driver = time.process_time() - cpu0
    assert flow.finished and flow.counts()[State.DONE] == len(plan.stages)
    bound = lower_bound(plan, seconds, requests, pools.capacity)
    return {"makespan": clock, "bound": bound, "ms_per_event": 1000 * driver / events, "events": events,
            "setup_s": setup}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[64, 512])
    p.add_argument("--seeds", type=int, default=30, help="seeds of the grid (30: ~11,000 stages)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--spread", type=float, default=0.25, help="sigma of the lognormal factor on each estimate")
    p.add_argument("--repeats", type=int, default=3, help="draws of the durations per GPU count")
    a = p.parse_args()
    t0 = time.perf_counter()
    plan = paper_plan(a.seeds, a.alphas)
    counts = plan.counts()
    print(f"plan: {len(plan.stages)} stages ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
          f"{len(plan.cells)} cells: paper-nlp x {a.seeds} seeds x alpha_max {a.alphas}; planned in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    print(f"durations: cost estimate / {TFLOPS_PER_GPU:g} TFLOP/s x lognormal(0, {a.spread}); "
          f"{a.repeats} draws per row (mean, min)\n")
    print("| GPUs | makespan / bound (mean, min) | driver ms per event | events | Dataflow set-up s |")
    print("|---:|---:|---:|---:|---:|")
    for gpus in a.gpus:
        runs = [simulate(plan, gpus, a.spread, seed) for seed in range(a.repeats)]
        ratios = [r["bound"] / r["makespan"] for r in runs]
        ms = sum(r["ms_per_event"] for r in runs) / len(runs)
        print(f"| {gpus} | {sum(ratios) / len(ratios):.3f} ({min(ratios):.3f}) | {ms:.3f} | {runs[0]['events']} "
              f"| {runs[0]['setup_s']:.2f} |", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory of this process (imports, plan, simulation): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
