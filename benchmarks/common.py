"""Shared pieces of the benchmarks: the experiment they time and a bare PyTorch baseline.

The bare baseline is what a researcher would write without w2s-ray: one
process, pandas rows, the same model loader, loss step, optimizer, schedule,
batch size and epochs as the engine (it imports those functions from the
engine, so the arithmetic per step is identical), no Ray and no artifacts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(k, v)

from w2s_ray.config import ExperimentConfig, LossConfig, SplitConfig, TrainOverrides  # noqa: E402


def experiment_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--weak", default="minilm-l6-1l")
    p.add_argument("--strong", default="minilm-l6")
    p.add_argument("--n", type=int, default=1000, help="rows in half A and in half B")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--out", default="runs/bench", help="scratch folder (a fresh store per run)")
    return p


def experiment(a: argparse.Namespace, loss: LossConfig | None = None) -> ExperimentConfig:
    return ExperimentConfig("vader", a.weak, a.strong, loss=loss or LossConfig("xent"),
                            split=SplitConfig(0, a.n, a.n, a.n_test),
                            train=TrainOverrides(epochs=a.epochs, max_len=a.max_len))


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.stages[name] = timer.stages.get(name, 0.0) + time.perf_counter() - self.t0

        return _Span()


def bare_train(params: dict[str, Any], rows: pd.DataFrame, target: str, threads: int) -> tuple[Any, Any, float]:
    """The engine's loop without Ray: same loader, loss step, AdamW, cosine schedule, batches, epochs."""
    from w2s_ray.ingest import epoch_order
    from w2s_ray.losses import get_loss  # noqa: F401  (imported for parity with the worker)
    from w2s_ray.models import load_pretrained, model_spec
    from w2s_ray.train import LoopConfig, cosine_schedule, optimizer_step

    torch.set_num_threads(threads)
    t = params["train"]
    torch.manual_seed(t["seed"])
    model, tok = load_pretrained(model_spec(params["model"]))
    cfg = LoopConfig(model=params["model"], train=t, loss=params["loss"], target_column=target, n_rows=len(rows))
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    total = t["epochs"] * math.ceil(len(rows) / t["batch_size"])
    sched = cosine_schedule(opt, total)
    model.train()
    texts, targets = rows["text"].to_numpy(), rows[target].to_numpy(dtype=np.float32)
    t0 = time.perf_counter()
    for epoch in range(t["epochs"]):
        order = epoch_order(len(rows), t["seed"], epoch)
        for i in range(0, len(rows), t["batch_size"]):
            idx = order[i:i + t["batch_size"]]
            optimizer_step(model, tok, texts[idx], torch.as_tensor(targets[idx]), cfg, sched.last_epoch / total,
                           opt, torch.device("cpu"))
            sched.step()
    samples_per_s = t["epochs"] * len(rows) / (time.perf_counter() - t0)
    return model, tok, samples_per_s


def bare_predict(model: Any, tok: Any, texts: np.ndarray, max_len: int) -> np.ndarray:
    """P(class 1) in length-sorted chunks (what the engine's Predictor does, without Ray Data)."""
    from w2s_ray.label import FORWARD_CHUNK
    from w2s_ray.train import encode

    model.eval()
    out = np.empty(len(texts), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for i in range(0, len(order), FORWARD_CHUNK):
            idx = order[i:i + FORWARD_CHUNK]
            logits = model(**encode(tok, texts[idx], max_len, torch.device("cpu")))
            out[idx] = torch.softmax(logits.float(), -1)[:, 1].numpy()
    return out


def accuracy(labels: np.ndarray, p1: np.ndarray) -> float:
    return float(((p1 > 0.5) == (labels > 0.5)).mean())
