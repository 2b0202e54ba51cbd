"""Length-bucketed batches against shuffled ones: real tokens per second of the training step, side by side.

Both runs train the same model from the same weights on the same rows with
the engine's step function (``train.optimizer_step``); only the batch order
differs (``ingest.length_bucketed`` vs the plain seeded shuffle). Tokens/s
counts real tokens (attention mask), so padding is cost, not credit. The two
orders alternate (A B A B) to spread any load on the machine evenly.

    .venv/bin/python benchmarks/length_buckets.py                 # offline default strong model, CPU
    .venv/bin/python benchmarks/length_buckets.py --strong minilm-l6 --n 1000 --threads 2
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import experiment, experiment_args

from w2s_ray.data import build_data_artifact, resolve_dataset
from w2s_ray.ingest import epoch_order, length_bucketed
from w2s_ray.models import load_pretrained, model_spec
from w2s_ray.plan import plan_experiment
from w2s_ray.train import LoopConfig, cosine_schedule, encode, optimizer_step


def epoch(params: dict, texts: np.ndarray, targets: np.ndarray, order: np.ndarray) -> tuple[float, int, int]:
    """(seconds, real tokens, padded tokens) of one epoch of optimizer steps in ``order``, from fresh weights."""
    t = params["train"]
    torch.manual_seed(t["seed"])
    model, tok = load_pretrained(model_spec(params["model"]))
    cfg = LoopConfig(model=params["model"], train=t, loss=params["loss"], target_column="label", n_rows=len(texts))
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    steps = -(-len(order) // t["batch_size"])
    sched = cosine_schedule(opt, steps)
    model.train()
    real = padded = 0
    t0 = time.perf_counter()
    for i in range(0, len(order), t["batch_size"]):
        idx = order[i:i + t["batch_size"]]
        mask = encode(tok, texts[idx], t["max_len"], torch.device("cpu"))["attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
        optimizer_step(model, tok, texts[idx], torch.as_tensor(targets[idx]), cfg, sched.last_epoch / steps, opt,
                       torch.device("cpu"))
        sched.step()
    return time.perf_counter() - t0, real, padded


def main() -> None:
    p = experiment_args(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    plan = plan_experiment(experiment(a))
    ceiling = next(s for s in plan.stages.values() if s.role == "ceiling")
    import tempfile
    from pathlib import Path

    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        build_data_artifact(resolve_dataset("vader"), plan.cells[0].config.split, Path(d))
        rows = pd.read_parquet(Path(d) / "B.parquet")
    texts, targets = rows["text"].to_numpy(), rows["label"].to_numpy(dtype=np.float32)
    lengths = np.array([len(t) for t in texts])
    t = ceiling.params["train"]
    shuffled = epoch_order(len(texts), t["seed"], 0)
    orders = {"shuffled": shuffled, "length buckets": length_bucketed(shuffled, lengths, t["batch_size"], t["seed"], 0)}
    runs: dict[str, list[tuple[float, int, int]]] = {k: [] for k in orders}
    for _ in range(a.repeats):
        for name, order in orders.items():
            runs[name].append(epoch(ceiling.params, texts, targets, order))
    print(f"\n{a.strong} on {len(texts)} MultiEmo rows, batch {t['batch_size']}, max_len {t['max_len']}, "
          f"{a.threads} thread(s), {a.repeats} epoch(s) each, alternating")
    print(f"{'batches':16}{'s/epoch':>10}{'real tok/s':>12}{'padding':>10}")
    rate = {}
    for name, rs in runs.items():
        seconds = float(np.mean([r[0] for r in rs]))
        rate[name] = rs[0][1] / seconds
        print(f"{name:16}{seconds:>10.1f}{rate[name]:>12.0f}{1 - rs[0][1] / rs[0][2]:>10.1%}")
    print(f"ratio (length buckets / shuffled, real tokens per second): {rate['length buckets'] / rate['shuffled']:.2f}")


if __name__ == "__main__":
    main()
