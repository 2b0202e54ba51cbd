"""GPU precision: fp32 vs the engine's bf16 autocast, gradient checkpointing, and the presets' memory estimate.

Per GPT-2 size, a random-init ``GPT2Config`` model (GPT-2's 50257-row vocabulary, so
parameter counts match the presets) is saved fp32 to a temporary folder with the
offline MiniLM WordPiece tokenizer and loaded by ``w2s_ray.models.load_pretrained``
(the engine's loading, last-token pooling and fp32 head). Each config times
``w2s_ray.train.optimizer_step`` (xent, AdamW, cosine schedule, the preset's batch
and minibatch, texts of random words filling max_len 512) after warm-up steps:

* fp32 (no autocast) vs bf16 (``train.precision``): steps/s, tokens/s, peak GB;
* bf16 with activation checkpointing (``models.enable_checkpointing``, as train.py) vs without;
* the presets' estimate (``trial_resources`` / ``finetune_memory_gb``) vs the measured
  ``max_memory_allocated`` peak (the estimate adds 2 GB of CUDA context it omits);
* sanity: finite losses, an overfit run (30 steps on 8 fixed rows, lr 1e-5, engine
  precision) whose loss falls, fp32 head logits under autocast, last-token pooling;
* MFU = 6 x non-embedding params x tokens/s / peak FLOPs (no LM head: embeddings do
  no matmuls). Exit code 1 if a check fails. No Ray, no hub; ~3 min on one H100:

    python benchmarks/gpu_precision.py --tokenizer DIR
    .venv/bin/python benchmarks/gpu_precision.py --tiny --device cpu   # CPU smoke test, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import gc
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from common import ROOT  # first: puts the repo on sys.path and sets the offline environment

from w2s_ray.models import REGISTRY, Classifier, ModelSpec, enable_checkpointing, load_pretrained
from w2s_ray.presets import finetune_memory_gb, trial_resources
from w2s_ray.train import LoopConfig, cosine_schedule, encode, optimizer_step, precision

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
GPT2_VOCAB = 50257
TINY = ModelSpec("tiny", "", lr=1e-3, batch_size=4, minibatch_size=2, max_len=32, n_layers=2, d_model=64)
GB = 1e9


def tokenizer_files(given: str | None) -> tuple[Path, list[str]]:
    """The tokenizer folder (--tokenizer, else a MiniLM one in the cache, else the minilm-l6 package) and its files.

    tokenizer_config.json is required (it names BertTokenizer: without it the GPT-2 config picks a GPT-2
    tokenizer), plus tokenizer.json or vocab.txt.
    """
    found = sorted((Path.home() / ".cache" / "w2s-ray" / "models").glob("*minilm*"), reverse=True)
    found = [d for d in found if (d / "tokenizer_config.json").is_file()]
    if given or found:
        folder = Path(given or found[0]).expanduser()
    else:
        from w2s_ray.offline import minilm_l6_path

        folder = minilm_l6_path()
    files = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if "tokenizer_config.json" not in files or not {"tokenizer.json", "vocab.txt"} & set(files):
        sys.exit(f"{folder} lacks tokenizer_config.json and tokenizer.json or vocab.txt (has {files})")
    return folder, files


def build_model_dir(spec: ModelSpec, tok_dir: Path, files: list[str], out: Path, device: torch.device) -> Path:
    """A random-init GPT-2 of the spec's shape, saved fp32 (as the hub's), next to only the tokenizer files."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    out.mkdir(parents=True)
    for name in files:
        shutil.copy(tok_dir / name, out / name)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token is not None and tok.cls_token is not None, f"not the BERT tokenizer: {type(tok).__name__}"
    d = spec.d_model
    cfg = GPT2Config(n_layer=spec.n_layers, n_embd=d, n_head=max(1, d // 64), n_positions=1024,
                     vocab_size=len(tok) if spec is TINY else max(len(tok), GPT2_VOCAB),
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        GPT2Model(cfg).save_pretrained(out)
    return out


def random_texts(tok: Any, n: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """Texts of max_len whole-word vocabulary entries: each fills max_len tokens after truncation."""
    words = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2]
    texts = np.array([" ".join(rng.choice(words, max_len)) for _ in range(n)], dtype=object)
    assert len(tok(texts[0], truncation=True, max_length=max_len)["input_ids"]) == max_len
    return texts


def loop_config(rows: int, minibatch: int, max_len: int, lr: float) -> LoopConfig:
    train = {"lr": lr, "batch_size": rows, "minibatch_size": minibatch, "max_len": max_len, "weight_decay": 0.0}
    return LoopConfig(model={}, train=train, loss={"name": "xent"}, target_column="label", n_rows=rows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_steps(pristine: Classifier, tok: Any, texts: np.ndarray, targets: torch.Tensor, cfg: LoopConfig,
                device: torch.device, amp: bool, ckpt: bool, warmup: int, steps: int) -> dict[str, Any]:
    """Optimizer steps on a fresh copy of the model: speed, peak memory, losses, head output dtype."""
    model = copy.deepcopy(pristine).to(device)
    if ckpt:
        enable_checkpointing(model.backbone)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train["lr"], weight_decay=cfg.train["weight_decay"])
    sched = cosine_schedule(opt, warmup + steps)
    autocast: Callable[[], Any] = (lambda: precision(device)) if amp else contextlib.nullcontext
    cuda = device.type == "cuda"
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, t0 = [], time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with autocast():
            loss, _ = optimizer_step(model, tok, texts, targets, cfg, i / (warmup + steps), opt, device)
        sched.step()
        losses.append(loss)
    sync(device)
    losses = [float(x) for x in losses]  # read back once, after the timed steps
    seconds = time.perf_counter() - t0
    with torch.no_grad(), autocast():
        head = model(**encode(tok, texts[:1], cfg.train["max_len"], device)).dtype
    return {"steps_per_s": steps / seconds, "tokens_per_s": steps * len(texts) * cfg.train["max_len"] / seconds,
            "peak_gb": torch.cuda.max_memory_allocated() / GB if cuda else math.nan,
            "reserved_gb": torch.cuda.max_memory_reserved() / GB if cuda else math.nan,
            "loss_first": losses[0], "loss_last": losses[-1], "finite": all(map(math.isfinite, losses)),
            "head_dtype": str(head).removeprefix("torch.")}


def measure(label: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One config, OOM caught; memory released before the next."""
    print(f"  {label:10s} ...", end=" ", flush=True)
    t0 = time.perf_counter()
    try:
        row = {"config": label, "oom": False, **run()}
    except torch.cuda.OutOfMemoryError:
        row = {"config": label, "oom": True}
    release()
    print("OOM" if row["oom"] else f"{row['tokens_per_s']:,.0f} tok/s", f"({time.perf_counter() - t0:.1f} s)",
          flush=True)
    return row


def bench_size(name: str, a: argparse.Namespace, tok_dir: Path, files: list[str],
               device: torch.device) -> list[dict[str, Any]]:
    """fp32, bf16, bf16 + checkpointing (bf16 ones on CUDA only) and the overfit run, for one size."""
    spec = TINY if a.tiny else REGISTRY[name]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        src = build_model_dir(spec, tok_dir, files, Path(tmp) / name, device)
        pristine, tok = load_pretrained(ModelSpec(name, f"path:{src}"))
    release()  # the random-init model built on the device
    n_params = sum(p.numel() for p in pristine.parameters())
    embeddings = sum(p.numel() for n, p in pristine.named_parameters() if n.startswith(("backbone.wte",
                                                                                       "backbone.wpe")))
    spec = dataclasses.replace(spec, params_m=spec.params_m or n_params / 1e6)
    plan = trial_resources(spec, minibatch_size=a.minibatch_size, max_len=a.max_len)
    mb, max_len, batch = plan["minibatch_size"], plan["max_len"], a.batch_size or spec.batch_size
    print(f"{name}: {n_params / 1e6:.1f}M params ({pristine.backbone.dtype}, pooling {pristine.pooling}), batch "
          f"{batch}, minibatch {mb}, max_len {max_len}, lr {spec.lr:g}, ready in {time.perf_counter() - t0:.1f} s; "
          f"trial_resources: {plan['strategy']}, full_ft_gb {plan['full_ft_gb']}, per_gpu_gb {plan['per_gpu_gb']}, "
          f"checkpointing {plan['gradient_checkpointing']}", flush=True)
    rng = np.random.default_rng(0)
    texts = random_texts(tok, batch, max_len, rng)
    targets = torch.as_tensor(rng.integers(0, 2, batch), dtype=torch.float32)
    k = min(a.overfit_rows, batch)
    runs = [("fp32", False, False)] + ([("bf16", True, False), ("bf16+ckpt", True, True)] if device.type == "cuda"
                                       else [])
    rows = []
    for label, amp, ckpt in runs:
        cfg = loop_config(batch, mb, max_len, spec.lr)
        rows.append(measure(label, functools.partial(train_steps, pristine, tok, texts, targets, cfg, device, amp,
                                                     ckpt, a.warmup, a.steps)))
        rows[-1].update(batch=batch, minibatch=mb, est_gb=finetune_memory_gb(spec, minibatch_size=mb, max_len=max_len,
                                                                             checkpointing=ckpt))
    cfg = loop_config(k, k, max_len, a.overfit_lr)  # precision(): bf16 on CUDA, fp32 on CPU, as in the engine
    rows.append(measure("overfit", functools.partial(train_steps, pristine, tok, texts[:k], targets[:k], cfg, device,
                                                     True, False, 0, a.overfit_steps)))
    rows[-1].update(batch=k, minibatch=k, est_gb=finetune_memory_gb(spec, minibatch_size=k, max_len=max_len))
    peak_flops = a.peak_tflops * 1e12 if device.type == "cuda" else math.nan
    for r in rows:
        r.update(size=name, params_m=n_params / 1e6, max_len=max_len, pooling=pristine.pooling,
                 mfu=6 * (n_params - embeddings) * r.get("tokens_per_s", math.nan) / peak_flops,
                 measured_over_est=r.get("peak_gb", math.nan) / r["est_gb"])
    del pristine
    release()
    return rows


def report(df: pd.DataFrame) -> list[tuple[str, bool]]:
    """Print the ratios per size (nan: OOM or not run); → the checks."""
    checks = [("no ray imported", "ray" not in sys.modules)]
    for size, g in df.groupby("size", sort=False):
        v = g[~g.oom].set_index("config")

        def at(config: str, col: str, v: pd.DataFrame = v) -> float:
            return float(v.at[config, col]) if config in v.index else math.nan

        print(f"{size}: tokens/s bf16/fp32 {at('bf16', 'tokens_per_s') / at('fp32', 'tokens_per_s'):.2f}; "
              f"bf16 ckpt/no-ckpt peak {at('bf16+ckpt', 'peak_gb') / at('bf16', 'peak_gb'):.2f}, "
              f"speed {at('bf16+ckpt', 'tokens_per_s') / at('bf16', 'tokens_per_s'):.2f}; "
              f"bf16 peak measured/estimate {at('bf16', 'measured_over_est'):.2f}; bf16 MFU {at('bf16', 'mfu'):.1%}; "
              f"overfit loss {at('overfit', 'loss_first'):.4f} -> {at('overfit', 'loss_last'):.4f}")
        checks += [(f"{size}: losses finite", bool(v.finite.all())),
                   (f"{size}: head logits float32", bool((v.head_dtype == "float32").all())),
                   (f"{size}: last-token pooling", bool((g.pooling == "last").all())),
                   (f"{size}: overfit loss falls", at("overfit", "loss_last") < at("overfit", "loss_first"))]
    return checks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="gpt2,gpt2-large,gpt2-xl", help="GPT-2 presets, comma-separated")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide GPT-2, 2 steps (smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokenizer", help="MiniLM tokenizer folder (default: found under ~/.cache/w2s-ray/models)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per config")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--minibatch-size", type=int, help="default: the preset's")
    p.add_argument("--max-len", type=int, help="default: the presets' planning default (512)")
    p.add_argument("--overfit-steps", type=int, default=30)
    p.add_argument("--overfit-rows", type=int, default=8)
    p.add_argument("--overfit-lr", type=float, default=1e-5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "runs/bench"), "gpu_precision.csv"))
    a = p.parse_args()
    if a.tiny:
        a.sizes, a.steps, a.warmup, a.overfit_steps, a.overfit_lr = "tiny", 2, 1, 10, 1e-3
    device = torch.device(a.device)
    tok_dir, files = tokenizer_files(a.tokenizer)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, tf32 matmul {torch.backends.cuda.matmul.allow_tf32}; {ROOT}")
    print(f"tokenizer {tok_dir}: copies {files}", flush=True)
    rows = [r for name in a.sizes.split(",") for r in bench_size(name.strip(), a, tok_dir, files, device)]
    cols = ["size", "config", "params_m", "batch", "minibatch", "max_len", "steps_per_s", "tokens_per_s", "peak_gb",
            "reserved_gb", "est_gb", "measured_over_est", "mfu", "loss_first", "loss_last", "finite", "head_dtype",
            "pooling", "oom"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, index=False)
    shown = df.drop(columns="oom").astype(object)
    shown.loc[df.oom, ["steps_per_s", "tokens_per_s", "peak_gb"]] = "OOM"
    print("\n" + shown.to_string(index=False, float_format=lambda x: f"{x:,.3f}") + "\n")
    checks = report(df)
    for what, ok in checks:
        print(f"CHECK {'ok  ' if ok else 'FAIL'} {what}")
    print(f"wrote {a.out}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
