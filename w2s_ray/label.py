"""Batch inference with Ray Data: weak labels on half B, predictions on test.

``read_parquet → map_batches → write_parquet``: rows stream through and never
pass through the driver. On GPUs the map runs in an actor pool (each actor
loads the checkpoint once; Ray does not reuse GPU task processes). On CPUs it
runs as tasks in Ray's pooled worker processes, each keeping the last model it
loaded: a job then costs a model load, not a fresh actor process importing
torch and transformers (docs/performance.md, "Batch inference"). The output holds ``id``, ``p1``
(P(class 1)) and, for weak labels, ``text``; never the ground-truth label, so
a student that trains on it cannot see GT.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from w2s_ray.ingest import Source, input_dataset
from w2s_ray.models import load_classifier

INFER_BATCH = 256  # rows per Ray Data batch
FORWARD_CHUNK = 32  # rows per forward pass, grouped by length to cut padding


class Predictor:
    """A Ray Data actor: one model load, then P(class 1) for every batch."""

    def __init__(self, store_uri: str, model_key: str, max_len: int, keep_text: bool, threads: int | None,
                 column: str = "text"):
        from w2s_ray.artifacts import ArtifactStore
        from w2s_ray.train import MODEL_DIR

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model_dir = ArtifactStore(store_uri).local_dir(model_key) / MODEL_DIR
        self.model, self.tokenizer = load_classifier(model_dir)
        self.model.to(self.device).eval()
        self.max_len, self.keep_text, self.column = max_len, keep_text, column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch[self.column]  # or an image dataset's PNG bytes
        p1 = np.empty(len(texts), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a forward pass
        for start in range(0, len(order), FORWARD_CHUNK):
            idx = order[start:start + FORWARD_CHUNK]
            p1[idx] = self.predict(texts[idx])
        out = {"id": batch["id"], "p1": p1}
        if self.keep_text:
            out[self.column] = texts
        return out

    def predict(self, texts: np.ndarray) -> np.ndarray:
        from w2s_ray.train import encode

        with torch.inference_mode():
            logits = self.model(**encode(self.tokenizer, texts, self.max_len, self.device))
            return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()


@functools.lru_cache(maxsize=1)
def _cached_predictor(store_uri: str, model_key: str, max_len: int, keep_text: bool,
                      threads: int | None, column: str = "text") -> Predictor:
    """The model this worker process loaded last (a pooled process serves job after job)."""
    return Predictor(store_uri, model_key, max_len, keep_text, threads, column)


def predict_batch(batch: dict[str, np.ndarray], **predictor: Any) -> dict[str, np.ndarray]:
    """Task form of :class:`Predictor` (CPU): P(class 1) with the process's cached model."""
    model = _cached_predictor(**predictor)
    if predictor.get("threads"):
        torch.set_num_threads(predictor["threads"])  # a pooled process may have served another setting
    return model(batch)


def _keep_slice(batch: Any, index: int, count: int) -> Any:
    from w2s_ray.data import bootstrap_slice

    return batch[[bootstrap_slice(g, count) == index for g in batch["group"]]]


def run_infer_stage(stage: Any, store: Any, actors: int = 1, threads: int | None = None,
                    use_gpu: bool = False) -> dict[str, Any]:
    """Label (split B) or predict (test) with the stage's model; commit the parquet."""
    import ray.data

    from w2s_ray.data import input_column

    split, data_key = stage.params["split"], stage.inputs["data"]
    keep_text = split in ("B", "val")  # weak labels are training / selection rows: they keep the model's input
    x = input_column(store, data_key)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # same batches on every run
    t0 = time.perf_counter()
    sliced = "slice" in stage.params  # a bootstrapping step labels only its own slice of B
    ds = input_dataset(Source(store.data_uri(data_key, f"{split}.parquet"), ("id", x, "group") if sliced
                              else ("id", x), store.manifest(data_key, verify=False).meta["rows"][split]))
    if sliced:
        index, count = stage.params["slice"]
        ds = ds.map_batches(_keep_slice, fn_kwargs={"index": index, "count": count}, batch_format="pandas")
        ds = ds.select_columns(["id", x])
    predictor = {"store_uri": store.uri, "model_key": stage.inputs["model"], "max_len": stage.params["max_len"],
                 "keep_text": keep_text, "threads": threads, "column": x}
    if use_gpu:
        out = ds.map_batches(Predictor, fn_constructor_kwargs=predictor, batch_size=INFER_BATCH, num_cpus=1,
                             num_gpus=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(actors, 1)))
    else:
        out = ds.map_batches(predict_batch, fn_kwargs=predictor, batch_size=INFER_BATCH, num_cpus=1,
                             concurrency=max(actors, 1))
    with store.building(stage.key) as build:
        out.write_parquet(str(build.dir / "data"))
        rows = pq.ParquetDataset(str(build.dir / "data")).read(columns=["id"]).num_rows
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs, "rows": rows,
                             "seconds": time.perf_counter() - t0}
    return meta


def _import_inference_modules() -> None:
    import transformers  # noqa: F401  (imported for its import time: the worker is warm before the first batch)

    from w2s_ray import models, train  # noqa: F401  (likewise)


def prewarm_worker() -> Any:
    """Start the pooled worker process that the first CPU inference job will run in, with its imports done.

    Started while a training runs (its launch leaves a core idle), the ~5 s
    of one core that a fresh process spends importing torch and transformers
    leave the labels job's critical path: Ray keeps the idle process and hands
    it the job's tasks (a local cluster keeps idle workers: see
    ``runtime.LOCAL_RAY_ENV``). Returns the task's ref (nothing to wait for).
    """
    import ray

    return ray.remote(num_cpus=1)(_import_inference_modules).remote()


def read_predictions(store: Any, key: str) -> Any:
    """The committed ``id, p1`` (and text) table of an ``infer`` artifact."""
    return pq.read_table(store.path(key, "data"), filesystem=store.fs).to_pandas()
