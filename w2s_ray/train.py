"""Fine-tuning on Ray Train: the per-worker loop and the stage that launches it.

The loop reads its rows (``text`` + a target column: GT ``label`` or the
weak model's ``p1``) by the route :mod:`w2s_ray.ingest` picks (in memory for
small tables, a Ray Data shard for large ones), steps AdamW with a cosine schedule,
and reports once per epoch with a checkpoint, so a restarted run resumes
from its last epoch. Gradient accumulation keeps the confidence loss's
hardening threshold batch-level: a no-grad pass over the whole optimizer
batch sets it before the minibatches backpropagate (the reference code kept
every minibatch graph alive instead).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2s_ray.ingest import Ingest, Source, route
from w2s_ray.losses import (
    NEEDS_BATCH_THRESHOLD,
    LossContext,
    ThresholdBuffer,
    alpha_at,
    balance_threshold,
    get_loss,
)
from w2s_ray.models import (
    BACKBONE_DIR,
    Classifier,
    apply_lora,
    enable_checkpointing,
    load_classifier,
    load_pretrained,
    model_spec,
    save_classifier,
)

TRAIN_STATE = "train_state.pt"
MODEL_DIR = "model"


@dataclass(frozen=True)
class LoopConfig:
    """Everything a worker needs, as plain values (it crosses process boundaries)."""

    model: dict[str, Any]
    train: dict[str, Any]
    loss: dict[str, Any]
    target_column: str
    n_rows: int
    torch_threads: int | None = None
    select: dict[str, Any] | None = None  # {"objective": weak|oracle, "column": p1|label}: per-epoch validation
    parallel: str = "ddp"  # ddp, or fsdp for models that do not fit one GPU (see presets.trial_resources)
    gradient_checkpointing: bool = False
    monitor: int = 0  # GT test accuracy points per epoch (analysis only: never reported as the objective)
    lora: dict[str, Any] | None = None  # low-rank adapters (see config.LoraConfig); None: every weight trains
    length_buckets: bool = False  # batch rows of similar length together (less padding; see ingest)
    sources: dict[str, dict[str, Any]] | None = None  # tables read in memory (see ingest); others are Ray Data shards
    init: dict[str, str] | None = None  # {"store", "key"} of the adapted backbone to start from (generative finetuning)
    input_column: str = "text"  # what the model reads: ``text``, or an image dataset's ``image`` (PNG bytes)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_rows / self.train["batch_size"])


def encode(tokenizer: Any, texts: Sequence[Any], max_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's model inputs: token ids and mask, or (``tokenizer`` an image processor, ``texts`` PNG bytes) pixels."""
    from w2s_ray.vision import encode_images, is_image_processor

    if is_image_processor(tokenizer):
        return encode_images(tokenizer, texts, device)
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def optimizer_step(
    model: torch.nn.Module, tokenizer: Any, texts: np.ndarray, targets: torch.Tensor,
    cfg: LoopConfig, progress: float, optimizer: torch.optim.Optimizer, device: torch.device,
    buffer: ThresholdBuffer | None = None,
) -> tuple[torch.Tensor, float]:
    """One optimizer step over a batch, accumulating over minibatches. → (loss, alpha).

    The loss stays a tensor on the device: reading it back (``float``) would
    make the host wait for the GPU every step; the loop reads an epoch's mean
    once. ``buffer`` (logconf with ``threshold_buffer``): the threshold comes
    from the recent rows' predictions, this batch's included.
    """
    loss_fn = get_loss(cfg.loss["name"])
    alpha = alpha_at(progress, cfg.loss.get("alpha_max", 0.0), cfg.loss.get("warmup_frac", 0.0))
    mb, max_len, n = cfg.train["minibatch_size"], cfg.train["max_len"], len(texts)
    chunks = [slice(i, min(i + mb, n)) for i in range(0, n, mb)]
    pos_frac = float(targets.float().mean())
    threshold = None
    if cfg.loss["name"] in NEEDS_BATCH_THRESHOLD and (len(chunks) > 1 or buffer is not None):
        with torch.no_grad():
            p1 = torch.cat([torch.softmax(model(**encode(tokenizer, texts[c], max_len, device)), -1)[:, 1]
                            for c in chunks])
        if buffer is None:
            threshold = balance_threshold(p1, pos_frac)
        else:
            threshold, pos_frac = buffer.update(p1, targets)
    ctx = LossContext(alpha=alpha, threshold=threshold, pos_frac=pos_frac)
    total = torch.zeros((), device=device)
    for c in chunks:
        logits = model(**encode(tokenizer, texts[c], max_len, device))
        loss = loss_fn(logits, targets[c].to(device), ctx) * ((c.stop - c.start) / n)
        loss.backward()
        total += loss.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, alpha


def validation_objective(model: torch.nn.Module, tokenizer: Any, batches: Iterable[dict[str, np.ndarray]],
                         column: str, max_len: int, device: torch.device, input_column: str = "text") -> float:
    """Accuracy on this rank's validation rows against ``column``: weak labels (``p1``) or GT (``label``).

    Which column the rows carry is the selection objective: with ``weak``
    the validation rows reach the worker without any GT column at all.
    Counts are summed over workers, so every rank reports the same value.
    """
    model.eval()
    right = total = 0
    with torch.inference_mode():
        for batch in batches:
            logits = model(**encode(tokenizer, batch[input_column], max_len, device))
            pred = logits.argmax(-1).cpu().numpy()
            right += int((pred == (np.asarray(batch[column]) > 0.5)).sum())
            total += len(pred)
    model.train()
    counts = torch.tensor([right, total], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    return float(counts[0] / counts[1].clamp_min(1))


def precision(device: torch.device) -> Any:
    """bf16 autocast on GPUs (the head computes in fp32: see Classifier); plain fp32 on CPU."""
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def gpu_plan(params: dict[str, Any], resources: Any) -> dict[str, Any]:
    """Workers per trial and parallelism for a GPU run, from the model's memory estimate.

    A preset (or a hub id whose size is in its name) that does not fit one GPU
    gets FSDP over several; more workers than the profile asks for are never
    dropped below ``resources.num_workers``.
    """
    from w2s_ray.config import ConfigError
    from w2s_ray.models import resolve_model
    from w2s_ray.presets import trial_resources

    plan = {"num_workers": resources.num_workers, "parallel": "ddp", "gradient_checkpointing": False}
    if not resources.use_gpu:
        return plan
    try:
        spec = resolve_model(params["model"]["name"])
    except ConfigError:  # a local path that moved since planning: no estimate, keep the profile
        return plan
    need = trial_resources(spec, minibatch_size=params["train"]["minibatch_size"], max_len=params["train"]["max_len"],
                           lora=bool(params.get("lora")))
    if not need["fits"]:
        raise RuntimeError(need["refusal"])
    plan["num_workers"] = max(resources.num_workers, need["num_workers"])
    plan["parallel"] = "fsdp" if need["fsdp"] else "ddp"
    plan["gradient_checkpointing"] = bool(need["gradient_checkpointing"])
    return plan


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 with no warmup, as in the reference recipe."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    )


def _unwrap(model: torch.nn.Module) -> Classifier:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """FSDP: the gathered full weights on rank 0 (a collective: every rank must call it); else None."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(model, FSDP):
        return None
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True,
                                                                                         rank0_only=True)):
        return model.state_dict()


def _save_checkpoint(out: Path, model: torch.nn.Module, tokenizer: Any, optimizer: Any, scheduler: Any,
                     epoch: int, history: list[dict[str, Any]], cfg: LoopConfig,
                     full_state: dict[str, torch.Tensor] | None = None) -> None:
    """Weights, and the optimizer/schedule/epoch to resume from.

    The optimizer state (AdamW: twice the weights' bytes) is left out where no
    resume needs it: after the last epoch, and under FSDP (sharded: it restarts).
    """
    save_classifier(_unwrap(model), tokenizer, out / MODEL_DIR, {"model": cfg.model}, state_dict=full_state)
    last = epoch >= cfg.train["epochs"]
    optimizer_state = optimizer.state_dict() if full_state is None and not last else None
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "epoch": epoch,
                "rng": torch.get_rng_state()}, out / TRAIN_STATE)
    (out / "history.json").write_text(json.dumps(history, indent=1))


def curve_batches(steps_per_epoch: int, points: int) -> set[int]:
    """After which batches of an epoch a GT test point is taken besides its end: ``points`` evenly spaced."""
    return {round(k * steps_per_epoch / points) for k in range(1, points)} - {0, steps_per_epoch} if points else set()


@dataclass
class WorkerRun:
    """What one worker's training holds from its set-up through its epochs."""

    cfg: LoopConfig
    model: torch.nn.Module
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    tables: dict[str, Ingest]
    buffer: ThresholdBuffer | None
    history: list[dict[str, Any]]
    start_epoch: int
    total_steps: int
    setup: dict[str, float]  # reported with the first epoch it runs

    def gt_test_point(self) -> dict[str, Any]:
        """Analysis only: nothing reads it back."""
        cfg = self.cfg
        return {"step": self.scheduler.last_epoch, "gt_test_acc": validation_objective(
            self.model, self.tokenizer, self.tables["monitor"].batches(128), "label", cfg.train["max_len"],
            self.device, cfg.input_column)}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker loop: set up (resume or load), then per epoch train, then save and report."""
    run = setup_worker(LoopConfig(**config))
    for epoch in range(run.start_epoch, run.cfg.train["epochs"]):
        metrics = train_epoch(run, epoch)
        save_epoch(run, epoch, metrics)


def setup_worker(cfg: LoopConfig) -> WorkerRun:
    """Seeds, the model (from the run's last checkpoint if any), optimizer, schedule and the ingested tables."""
    import ray.train
    import ray.train.torch

    started, started_at = time.perf_counter(), time.time()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    seed = cfg.train["seed"]
    torch.manual_seed(seed)
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume: weights, optimizer, schedule and epoch
        with checkpoint.as_directory() as d:
            model, tokenizer = load_classifier(Path(d) / MODEL_DIR, trainable=True)
            state = torch.load(Path(d) / TRAIN_STATE, weights_only=True)
            history = json.loads((Path(d) / "history.json").read_text())
    else:
        model, tokenizer = load_pretrained(model_spec(cfg.model), _adapted_backbone(cfg.init))
        if cfg.lora:
            model = apply_lora(model, cfg.lora)
        state, history = None, []
    if cfg.gradient_checkpointing:
        enable_checkpointing(model.backbone)
    model = ray.train.torch.prepare_model(model, parallel_strategy=cfg.parallel if ctx.get_world_size() > 1
                                          else None)
    device = ray.train.torch.get_device()
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: adapters and head only
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train["lr"], weight_decay=cfg.train["weight_decay"],
                                  fused=device.type == "cuda")  # one kernel per step instead of one per tensor
    total_steps = cfg.train["epochs"] * math.ceil(cfg.steps_per_epoch / max(ctx.get_world_size(), 1))
    scheduler = cosine_schedule(optimizer, total_steps)
    start_epoch = 0
    if state is not None:
        if state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
    size = cfg.loss.get("threshold_buffer", 0)
    buffer = ThresholdBuffer(size) if size else None  # starts empty on resume: it refills within N rows
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tables = {name: Ingest(name, cfg.sources, rank, world) for name in ("train", "val", "monitor")}
    t_ingest = time.perf_counter()
    for name, wanted in (("train", True), ("val", bool(cfg.select)), ("monitor", cfg.monitor > 0)):
        if wanted:
            tables[name].load()
    setup = {"worker_started_at": started_at, "setup_s": time.perf_counter() - started,
             "ingest_s": time.perf_counter() - t_ingest}
    model.train()
    return WorkerRun(cfg, model, tokenizer, optimizer, scheduler, device, tables, buffer, history, start_epoch,
                     total_steps, setup)


def train_epoch(run: WorkerRun, epoch: int) -> dict[str, Any]:
    """One epoch's steps (and GT test points, if asked); → the epoch's metrics, its validation objective too."""
    cfg = run.cfg
    t0, losses, seen, alpha, curve = time.perf_counter(), [], 0, 0.0, []
    curve_after = curve_batches(run.total_steps // cfg.train["epochs"], cfg.monitor)
    batches = run.tables["train"].epoch(epoch, cfg.train["batch_size"], cfg.train["seed"], cfg.length_buckets)
    for i, batch in enumerate(batches, 1):
        targets = torch.as_tensor(batch[cfg.target_column], dtype=torch.float32)
        with precision(run.device):
            loss, alpha = optimizer_step(run.model, run.tokenizer, batch[cfg.input_column], targets, cfg,
                                         run.scheduler.last_epoch / run.total_steps, run.optimizer, run.device,
                                         run.buffer)
        run.scheduler.step()
        losses.append(loss)
        seen += len(targets)
        if i in curve_after:
            curve.append(run.gt_test_point())
    seconds = time.perf_counter() - t0
    metrics = {"epoch": epoch + 1, "epochs": cfg.train["epochs"],
               "train_loss": float(torch.stack(losses).float().mean()), "alpha": alpha,
               "step": run.scheduler.last_epoch, "samples": seen, "samples_per_s": seen / seconds, "epoch_s": seconds}
    if epoch == run.start_epoch:  # model load, device placement, ingest of in-memory shards
        metrics.update(run.setup)
    if cfg.select:
        metrics["objective"] = validation_objective(run.model, run.tokenizer, run.tables["val"].batches(128),
                                                    cfg.select["column"], cfg.train["max_len"], run.device,
                                                    cfg.input_column)
    if cfg.monitor:
        curve.append(run.gt_test_point())
        metrics.update(gt_test_acc=curve[-1]["gt_test_acc"], gt_test_curve=curve)
    return metrics


def save_epoch(run: WorkerRun, epoch: int, metrics: dict[str, Any]) -> None:
    """Append the epoch to the history; rank 0 checkpoints (weights, optimizer, schedule, RNG), every rank reports."""
    import ray.train

    run.history.append(metrics)
    full_state = full_state_dict(run.model)
    with tempfile.TemporaryDirectory() as tmp:
        if ray.train.get_context().get_world_rank() == 0:
            _save_checkpoint(Path(tmp), run.model, run.tokenizer, run.optimizer, run.scheduler, epoch + 1,
                             run.history, run.cfg, full_state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def _adapted_backbone(init: dict[str, str] | None) -> Path | None:
    """The local directory of an ``adapt`` stage's backbone (downloaded once if the store is remote)."""
    if init is None:
        return None
    from w2s_ray.artifacts import ArtifactStore

    return ArtifactStore(init["store"]).local_dir(init["key"]) / BACKBONE_DIR


def run_train(loop: Any, config: dict[str, Any], name: str, resources: Any, storage_path: str, num_workers: int,
              datasets: dict[str, Any] | None = None, callbacks: Sequence[Any] = (),
              checkpoint_config: Any = None) -> Any:
    """One Ray Train run of ``loop``, named ``name`` (a re-run resumes it), with the run's one retry budget.

    Always real worker processes: Train's local mode (``num_workers=0``) runs
    the loop in the calling process, and inside a Tune function trial (where
    every training runs) its ``ray.train.get_context`` raises Tune's
    deprecation error (ray-project/ray#49454).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=resources.use_gpu,
                                               resources_per_worker={"CPU": resources.worker_cpus}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=checkpoint_config,
        ),
        datasets=datasets,
    )
    return trainer.fit()


def fit_train_stage(
    stage: Any, store: Any, resources: Any, storage_path: str, torch_threads: int | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run a ``train`` stage as a TorchTrainer and commit its final checkpoint.

    The Train run is named by the stage key, so a re-run after a crash resumes
    from the run's last epoch checkpoint instead of starting over.
    """

    params = stage.params
    sources = _sources(stage, store)
    memory, datasets = route(sources)
    gpu = gpu_plan(params, resources)
    select = params.get("select")
    loop = LoopConfig(model=params["model"], train=params["train"], loss=params["loss"],
                      target_column=sources["train"].columns[1], n_rows=sources["train"].rows,
                      torch_threads=torch_threads, select=select, parallel=gpu["parallel"],
                      gradient_checkpointing=gpu["gradient_checkpointing"],
                      monitor=params.get("monitor_points", 1) if "monitor" in sources else 0,
                      lora=params.get("lora"), length_buckets=bool(params.get("length_buckets")),
                      sources=memory,
                      init={"store": store.uri, "key": stage.inputs["init"]} if "init" in stage.inputs else None,
                      input_column=sources["train"].columns[0])
    t0, fit_at = time.perf_counter(), time.time()
    result = run_train(train_loop_per_worker, loop.__dict__, stage.key, resources, storage_path, gpu["num_workers"],
                       datasets=datasets, callbacks=callbacks, checkpoint_config=_checkpoint_config(select))
    seconds = time.perf_counter() - t0
    chosen = result.get_best_checkpoint("objective", "max") if select else result.checkpoint
    with chosen.as_directory() as d:
        history = json.loads((Path(d) / "history.json").read_text())
        meta = {"stage": stage.name, "params": params, "inputs": stage.inputs, "seconds": seconds,
                "torch_threads": torch_threads,  # changes floating-point sums: recorded with the weights
                "history": history}  # with selection: up to the selected (best) epoch
        if select:
            meta["selected_epoch"] = history[-1]["epoch"]
        t_commit = time.perf_counter()
        meta["timing"] = stage_timing(_full_history(result) if select else history, fit_at, seconds)
        store.commit(stage.key, Path(d), meta, exclude=(TRAIN_STATE,))
    meta["timing"]["commit_s"] = time.perf_counter() - t_commit
    return meta


def stage_timing(history: list[dict[str, Any]], fit_at: float, fit_s: float) -> dict[str, float]:
    """Where a training's wall time went, from the full per-epoch history of its latest checkpoint.

    launch: ``fit()`` called -> worker loop running (controller, worker
    process, imports); setup: model load + ingest; loop: this run's steps
    (a resumed run counts only the epochs it ran itself); the remainder of
    ``fit()`` is checkpointing, reporting and teardown. ``fit_at`` (wall
    clock, s since the epoch) places the training on the run's timeline.
    """
    firsts = [i for i, h in enumerate(history) if "worker_started_at" in h]
    if not firsts:
        return {"fit_at": fit_at, "fit_s": fit_s}
    first = history[firsts[-1]]
    launch, setup = first["worker_started_at"] - fit_at, first["setup_s"]
    loop = sum(h["epoch_s"] for h in history[firsts[-1]:])
    return {"fit_at": fit_at, "fit_s": fit_s, "launch_s": launch, "setup_s": setup, "ingest_s": first["ingest_s"],
            "loop_s": loop, "checkpoint_report_s": fit_s - launch - setup - loop}


def _full_history(result: Any) -> list[dict[str, Any]]:
    """Every epoch's metrics (the selected checkpoint's history stops at its epoch; the latest one's does not)."""
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / "history.json").read_text())


def _sources(stage: Any, store: Any) -> dict[str, Source]:
    """The tables a training reads: its train rows, validation rows (selection), GT test rows (monitor).

    Train rows are a GT split (``label``) or weak labels (``p1``; that
    artifact has no GT column at all, and a bootstrap step's labels cover
    only its slice of B). Validation for the weak objective is weak-labelled
    too; only the oracle objective reads GT validation labels.
    """
    from w2s_ray.data import input_column

    params, data_key = stage.params, stage.inputs["data"]
    data_rows = store.manifest(data_key).meta["rows"]
    x = input_column(store, data_key)  # text, or an image dataset's PNG bytes

    def split(name: str) -> Source:
        return Source(store.data_uri(data_key, f"{name}.parquet"), (x, "label"), data_rows[name])

    def labels(key: str) -> Source:
        return Source(store.data_uri(key, "data"), (x, "p1"), store.manifest(key).meta["rows"])

    sources = {"train": split(params["split"]) if params["targets"] == "gt" else labels(stage.inputs["labels"])}
    select = params.get("select")
    if select:
        sources["val"] = labels(stage.inputs["val_labels"]) if select["objective"] == "weak" else split("val")
    if params.get("monitor") == "gt_test":  # analysis only; selection reads "objective", never this
        sources["monitor"] = split("test")
    return sources


def _checkpoint_config(select: dict[str, Any] | None) -> Any:
    """Keep the last epoch, or with selection the best epoch on the validation objective."""
    import ray.train

    if select:
        return ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="objective",
                                          checkpoint_score_order="max")
    return ray.train.CheckpointConfig(num_to_keep=1)
