"""Linear-probe mode: frozen features computed once, heads trained on them in seconds.

``features`` stages run a pretrained backbone over every row of every split
with Ray Data (``read_parquet → map_batches(actor pool) → write_parquet``) and
cache ``id, split, features`` as parquet, keyed by (model, max_len, data
artifact): every probe of that model on that data reuses them. ``probe``
stages train only a linear head (the same losses and schedule as full
fine-tuning) and ``probeinfer`` stages apply it; both are Ray tasks, small
enough that an alpha grid costs seconds per point.

Features are standardised with the mean and spread of the rows the head is
trained on (no labels involved); the head stores them so predictions on
other splits use the same transform.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from w2s_ray.losses import NEEDS_BATCH_THRESHOLD, LossContext, ThresholdBuffer, alpha_at, get_loss
from w2s_ray.train import cosine_schedule

FEATURES_BATCH = 256  # rows per Ray Data batch
FORWARD_CHUNK = 32  # rows per forward pass, grouped by length
HEAD_FILE = "head.safetensors"


class FeatureExtractor:
    """A Ray Data actor: loads the pretrained backbone once, returns pooled features per row."""

    def __init__(self, model: dict[str, Any], max_len: int, threads: int | None):
        from w2s_ray.models import load_pretrained, model_spec

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_pretrained(model_spec(model))
        self.model.to(self.device).eval()
        self.max_len = max_len

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from w2s_ray.train import encode
        from w2s_ray.vision import encode_images, is_image_processor

        images = is_image_processor(self.tokenizer)
        texts = batch["text"]
        order = np.argsort([len(t) for t in texts], kind="stable")  # less padding (images: any order)
        out: np.ndarray | None = None
        with torch.inference_mode():
            for start in range(0, len(order), FORWARD_CHUNK):
                idx = order[start:start + FORWARD_CHUNK]
                enc = (encode_images(self.tokenizer, batch["image"][idx], self.device) if images
                       else encode(self.tokenizer, texts[idx], self.max_len, self.device))
                feats = self.model.features(**enc).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(texts), feats.shape[1]), dtype=np.float32)
                out[idx] = feats
        assert out is not None
        values = pa.array(out.ravel(), type=pa.float32())
        return pa.table({"id": batch["id"], "features": pa.FixedSizeListArray.from_arrays(values, out.shape[1])})


def run_features_stage(stage: Any, store: Any, threads: int | None = None, use_gpu: bool = False) -> dict[str, Any]:
    """Features of every row of the stage's rows artifact, committed as one parquet directory."""
    import ray.data

    from w2s_ray.data import ROWS_FILE

    rows_key = stage.inputs["rows"]
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # same batches, same padding
    t0 = time.perf_counter()
    column = store.manifest(rows_key, verify=False).meta.get("input_column", "text")
    ds = ray.data.read_parquet(store.data_uri(rows_key, ROWS_FILE))  # sorted by length: batches pad little
    out = ds.select_columns(["id", "text", *(["image"] if column == "image" else [])]).map_batches(
        FeatureExtractor,
        fn_constructor_kwargs={"model": stage.params["model"], "max_len": stage.params["max_len"],
                               "threads": threads},
        batch_size=FEATURES_BATCH,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
    )
    with store.building(stage.key) as build:
        out.write_parquet(str(build.dir / "data"))
        rows = pq.ParquetDataset(str(build.dir / "data")).read(columns=["id"]).num_rows
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs, "rows": rows,
                             "seconds": time.perf_counter() - t0}
    return meta


def read_features_table(store: Any, key: str, ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, features (n, d) float32) of a features artifact (only ``ids``, if given), ordered by id.

    The order is the files' content, not the order Ray Data wrote them in, so
    a seeded head sees the same rows in the same order on every run.
    """
    table = pq.read_table(store.path(key, "data"), filesystem=store.fs, columns=["id", "features"])
    if ids is not None:
        table = table.filter(pc.is_in(table["id"], value_set=ids))
    table = table.sort_by("id")
    column = table["features"].combine_chunks()
    width = column.type.list_size
    feats = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32)
    return table["id"].to_numpy(zero_copy_only=False), feats


def read_features(store: Any, key: str, data_key: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, features) of one split of a data artifact, ordered by id; every row of it must have features."""
    ids = pq.read_table(store.path(data_key, f"{split}.parquet"), filesystem=store.fs, columns=["id"])["id"]
    out = read_features_table(store, key, ids)
    if len(out[0]) != len(ids):
        raise ValueError(f"features {key} lack {len(ids) - len(out[0])} row(s) of split {split} of {data_key}")
    return out


def _training_rows(store: Any, stage: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, features, P(class 1) targets) a head trains on.

    Targets are GT labels of its split, or the weak labels, whose artifact has
    no GT column and may cover only part of B: the head trains on exactly the
    rows they cover.
    """
    ids, feats = read_features(store, stage.inputs["features"], stage.inputs["data"], stage.params["split"])
    if stage.params["targets"] == "gt":
        by_id = _table_by_id(store, stage.inputs["data"], f"{stage.params['split']}.parquet", "label")
    else:
        by_id = _table_by_id(store, stage.inputs["labels"], "data", "p1")
        keep = np.isin(ids, by_id.index.to_numpy())
        ids, feats = ids[keep], feats[keep]
    missing = set(ids) - set(by_id.index)
    if missing:
        raise ValueError(f"{stage.name}: {len(missing)} training row(s) have no target")
    return ids, feats, by_id.loc[ids].to_numpy(dtype=np.float32)


def _table_by_id(store: Any, key: str, path: str, column: str) -> Any:
    """One column of an artifact's table as a Series indexed by row id."""
    table = pq.read_table(store.path(key, path), filesystem=store.fs, columns=["id", column])
    return table.to_pandas().set_index("id")[column]


Scorer = Callable[[dict[str, torch.Tensor]], float]


def fit_head(feats: np.ndarray, targets: np.ndarray, loss: dict[str, Any], probe: dict[str, Any],
             seed: int, monitor: Scorer | None = None, validate: Scorer | None = None,
             on_epoch: Callable[[dict[str, Any]], None] | None = None,
             ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Train a zero-initialised 2-way linear head with the stage's loss. → (weights, per-epoch history).

    ``monitor`` (analysis only) sees a copy of the weights after each epoch and
    its value is logged as ``gt_test_acc``; nothing in training reads it back.
    ``validate`` (a search trial) scores each epoch as ``objective``; the best
    epoch's weights are returned, with the history up to that epoch (as a
    full fine-tuning run keeps its best checkpoint). ``on_epoch`` sees each
    epoch's record as it is made (Tune reports).
    """
    torch.manual_seed(seed)
    x = torch.from_numpy(feats)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.from_numpy(targets)
    head = torch.nn.Linear(x.shape[1], 2, bias=False)
    torch.nn.init.zeros_(head.weight)
    optimizer = torch.optim.AdamW(head.parameters(), lr=probe["lr"], weight_decay=probe["weight_decay"])
    steps = probe["epochs"] * math.ceil(len(x) / probe["batch_size"])
    scheduler = cosine_schedule(optimizer, steps)  # the full fine-tuning schedule
    loss_fn = get_loss(loss["name"])
    buffer = ThresholdBuffer(loss["threshold_buffer"]) if loss.get("threshold_buffer") else None
    order = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    for epoch in range(probe["epochs"]):
        losses, alpha = [], 0.0
        for idx in torch.randperm(len(x), generator=order).split(probe["batch_size"]):
            alpha = alpha_at(scheduler.last_epoch / steps, loss.get("alpha_max", 0.0), loss.get("warmup_frac", 0.0))
            logits = head(x[idx])
            ctx = LossContext(alpha=alpha)
            if buffer is not None and loss["name"] in NEEDS_BATCH_THRESHOLD:
                threshold, pos_frac = buffer.update(torch.softmax(logits.detach(), -1)[:, 1], y[idx])
                ctx = LossContext(alpha=alpha, threshold=threshold, pos_frac=pos_frac)
            value = loss_fn(logits, y[idx], ctx)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(value.detach()))
        history.append({"epoch": epoch + 1, "epochs": probe["epochs"], "train_loss": float(np.mean(losses)),
                        "alpha": alpha, "step": scheduler.last_epoch})
        weights = {"weight": head.weight.detach().clone(), "mean": mean, "std": std}
        if monitor is not None:
            history[-1]["gt_test_acc"] = monitor(weights)
        if validate is not None:
            history[-1]["objective"] = validate(weights)
            if best is None or history[-1]["objective"] > best[0]:  # ties keep the earlier epoch
                best = (history[-1]["objective"], weights, epoch + 1)
        if on_epoch is not None:
            on_epoch(history[-1])
    if best is not None:
        return best[1], history[:best[2]]
    return {"weight": head.weight.detach().clone(), "mean": mean, "std": std}, history


def validation_scorer(store: Any, stage: Any) -> Scorer:
    """A search trial's objective on the validation split: agreement with the weak labels (``weak``: no GT
    anywhere) or GT validation accuracy (``oracle``)."""
    ids, feats = read_features(store, stage.inputs["features"], stage.inputs["data"], "val")
    select = stage.params["select"]
    source = (stage.inputs["val_labels"], "data") if select["objective"] == "weak" else (stage.inputs["data"],
                                                                                          "val.parquet")
    return _accuracy_against(feats, _table_by_id(store, *source, select["column"]).loc[ids].to_numpy())


def gt_test_scorer(store: Any, stage: Any) -> Scorer:
    """GT test accuracy of a head, for the training-curve analysis (paper §5) only.

    It is logged beside the history; nothing selects on it (a probe search
    selects with :func:`validation_scorer`).
    """
    ids, feats = read_features(store, stage.inputs["features"], stage.inputs["data"], "test")
    gt = _table_by_id(store, stage.inputs["data"], "test.parquet", "label").loc[ids].to_numpy()
    return _accuracy_against(feats, gt)


def _accuracy_against(feats: np.ndarray, target: np.ndarray) -> Scorer:
    def accuracy(weights: dict[str, torch.Tensor]) -> float:
        return float(np.mean((predict_head(weights, feats) > 0.5) == (target > 0.5)))

    return accuracy


def predict_head(weights: dict[str, torch.Tensor], feats: np.ndarray) -> np.ndarray:
    x = (torch.from_numpy(feats) - weights["mean"]) / weights["std"]
    with torch.inference_mode():
        return torch.softmax(x @ weights["weight"].T, dim=-1)[:, 1].numpy()


def run_probe_stage(stage: Any, store_uri: str,
                    on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and commit one head (a Ray task, a search's Tune trial, or in process)."""
    from safetensors.torch import save_file

    from w2s_ray.artifacts import ArtifactStore

    store = ArtifactStore(store_uri)
    if store.exists(stage.key):
        return store.manifest(stage.key, verify=False).meta
    t0 = time.perf_counter()
    ids, feats, targets = _training_rows(store, stage)
    select = stage.params.get("select")
    weights, history = fit_head(
        feats, targets, stage.params["loss"], stage.params["probe"], stage.params["seed"],
        monitor=None if select else gt_test_scorer(store, stage),  # a search trial logs nothing from the test set
        validate=validation_scorer(store, stage) if select else None, on_epoch=on_epoch)
    with store.building(stage.key) as build:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(build.dir / HEAD_FILE))
        (build.dir / "history.json").write_text(json.dumps(history, indent=1))
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs, "rows": len(ids),
                             "history": history, "seconds": time.perf_counter() - t0}
        if select:
            meta["selected_epoch"] = history[-1]["epoch"]
    return meta


def run_probe_infer_stage(stage: Any, store_uri: str) -> dict[str, Any]:
    """P(class 1) of a committed head on one split's features, as an ``infer``-shaped artifact (id, p1)."""
    from safetensors.torch import load_file

    from w2s_ray.artifacts import ArtifactStore

    store = ArtifactStore(store_uri)
    if store.exists(stage.key):
        return store.manifest(stage.key, verify=False).meta
    t0 = time.perf_counter()
    weights = load_file(str(store.local_dir(stage.inputs["model"]) / HEAD_FILE))
    split = stage.params["split"]
    data_key = store.manifest(stage.inputs["model"], verify=False).meta["inputs"]["data"]
    ids, feats = read_features(store, stage.inputs["features"], data_key, split)
    return commit_predictions(store, stage, data_key, ids, predict_head(weights, feats), t0)


def commit_predictions(store: Any, stage: Any, data_key: str, ids: np.ndarray, p1: np.ndarray,
                       t0: float) -> dict[str, Any]:
    """Commit P(class 1) per row as an ``infer``-shaped artifact (``data/``: id, p1).

    Labels a fine-tuned student trains on (``params["text"]``) keep each row's
    text (or image), as it reads them; never the GT label.
    """
    columns = {"id": ids, "p1": np.asarray(p1, dtype=np.float32)}
    if stage.params.get("text"):
        from w2s_ray.data import input_column

        x = input_column(store, data_key)
        columns[x] = _table_by_id(store, data_key, f"{stage.params['split']}.parquet", x).loc[ids].to_numpy()
    with store.building(stage.key) as build:
        (build.dir / "data").mkdir(parents=True)
        pq.write_table(pa.table(columns), build.dir / "data" / "part-0.parquet")
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs, "rows": len(ids),
                             "seconds": time.perf_counter() - t0}
    return meta
