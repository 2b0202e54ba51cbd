"""How much GPU memory fine-tuning a model takes, and what a trial must ask Ray for.

The hub presets themselves (GPT-2, Pythia, Qwen2.5) are ``ModelSpec`` entries
in :data:`w2s_ray.models.REGISTRY`; this module turns a spec into resources,
so the planner can size Tune trials and Train worker groups before starting
anything. Estimates are deliberately simple and a little pessimistic.

Full fine-tuning with AdamW, per GPU, in bytes:

* model state: ``20 × P``: fp32 weights 4, fp32 grads 4, AdamW m and v 8, and
  4 for the step's temporaries (torch's foreach AdamW), divided by N under
  FSDP full sharding over N GPUs;
* activations: ``tokens × layers × 96 × d`` with ``tokens = minibatch ×
  max_len``. Korthikanti et al. (2022) count 34 for pure-bf16 fused layers;
  the engine's autocast path (fp32 master weights, fp32 LayerNorm outputs and
  residual stream, unfused GELU, SDPA attention, so no ``seq²`` term) measured
  90-97 (benchmarks/gpu_precision.py, GPT-2 124M-1.5B, max_len 512, on an
  H200). Gradient checkpointing keeps each layer's fp32 input, ``4 × d`` per
  token, plus one layer's full set;
* fixed: 2 GB (CUDA context, cuBLAS/NCCL workspaces) plus, under FSDP, two
  gathered fp32 layers; and only 90% of the card counts as usable.

Against that measurement the estimate is 6-15% above the measured peak
without checkpointing and 8-26% above with it (the peak memory allocated;
the 2 GB fixed term is not in it).

LoRA (frozen bf16 weights, ``2 × P``; adapters about 0.5% of P with full
state) is the fallback when full fine-tuning does not fit one node.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from w2s_ray.models import ModelSpec

GB = 1e9
STATE_BYTES = 20  # per parameter, full fine-tuning with AdamW: weights, grads, moments, step temporaries
LORA_BYTES = 2  # per frozen bf16 parameter
LORA_TRAINABLE = 0.005  # adapters' share of the parameters
ACT_BYTES = 96  # per token, layer and hidden unit (bf16 autocast, SDPA attention; measured 90-97)
CKPT_BYTES = 4  # per token, layer and hidden unit kept under gradient checkpointing (the fp32 layer input)
FIXED_GB = 2.0
USABLE = 0.9
ASPECT = 128  # d_model / layers of a typical decoder, to guess the shape from P alone
DEFAULT_MAX_LEN = 512
FSDP_WIDTHS = (2, 4, 8)

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([mb])(?![a-z])")


def params_m(spec: ModelSpec) -> float | None:
    """Millions of parameters: the preset's, else read off the hub id ("...-7B", "-410m")."""
    if spec.params_m is not None:
        return spec.params_m
    found = _SIZE_IN_NAME.findall(spec.source.rsplit("/", 1)[-1].lower())
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * (1000 if unit == "b" else 1)


def size_of(name: str) -> float:
    """Millions of parameters of a model as the CLI names it; NaN when unknown (e.g. a moved local path)."""
    from w2s_ray.models import resolve_model

    try:
        size = params_m(resolve_model(name))
    except Exception:  # noqa: BLE001  (any name that does not resolve has no size)
        size = None
    return float(size) if size is not None else math.nan


def by_size(names: list[str], size: Callable[[str], float] = size_of) -> list[str]:
    """Models smallest first (by ``size``, unknown sizes last, then in the given order)."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (size(n) if not math.isnan(size(n)) else math.inf, names.index(n)))


def _shape(spec: ModelSpec, p: float) -> tuple[int, int]:
    """(layers, hidden size): the spec's, else a typical shape with ``P ≈ 12·L·d²``."""
    d = spec.d_model or round((ASPECT * p * 1e6 / 12) ** (1 / 3))
    layers = spec.n_layers or max(1, round(d / ASPECT))
    return spec.num_layers or layers, d


def _tokens(spec: ModelSpec, minibatch_size: int | None, max_len: int | None) -> tuple[int, int]:
    """(minibatch, sequence length) a step holds at once: given, else the spec's defaults."""
    mb = minibatch_size or spec.minibatch_size or spec.batch_size
    return mb, int(min(max_len or DEFAULT_MAX_LEN, spec.max_len or math.inf))


def finetune_memory_gb(
    spec: ModelSpec, *, minibatch_size: int | None = None, max_len: int | None = None,
    shards: int = 1, checkpointing: bool = False, lora: bool = False,
) -> float | None:
    """Peak GB on each GPU to fine-tune ``spec`` (see the module docstring); None: unknown size."""
    p = params_m(spec)
    if p is None:
        return None
    layers, d = _shape(spec, p)
    mb, seq = _tokens(spec, minibatch_size, max_len)
    per_param = LORA_BYTES + LORA_TRAINABLE * STATE_BYTES if lora else STATE_BYTES / shards
    per_token = d * (layers * CKPT_BYTES + ACT_BYTES if checkpointing else layers * ACT_BYTES)
    gathered = 2 * 12 * d * d * 4 if shards > 1 else 0  # two fp32 layers unsharded at a time
    return (per_param * p * 1e6 + per_token * mb * seq + gathered) / GB + FIXED_GB


def trial_resources(
    spec: ModelSpec, gpu_mem_gb: float = 80.0, *, minibatch_size: int | None = None,
    max_len: int | None = None, max_gpus: int = 8, lora: bool = False,
) -> dict[str, Any]:
    """What one training trial of ``spec`` needs on GPUs of ``gpu_mem_gb`` GB.

    Full fine-tuning tries, in order: one GPU (gradient checkpointing only if
    needed); FSDP full sharding over 2, 4 or 8 GPUs of one node (up to
    ``max_gpus``). ``lora``: LoRA on one GPU. Each Train worker holds one GPU,
    so ``num_workers`` is the trial's GPU count. A model of unknown size gets
    one GPU and ``per_gpu_gb`` None. Where nothing fits, ``refusal`` says why
    and what would. ``minibatch_size``/``max_len`` default to the spec's; the
    planner should pass its effective TrainConfig values.
    """
    mb, seq = _tokens(spec, minibatch_size, max_len)
    sizing = {"minibatch_size": mb, "max_len": seq}
    usable = USABLE * gpu_mem_gb
    out: dict[str, Any] = {"model": spec.name, "params_m": params_m(spec), "gpu_mem_gb": gpu_mem_gb,
                           "usable_gb": round(usable, 1), **sizing,
                           "full_ft_gb": _round(finetune_memory_gb(spec, **sizing))}
    if out["params_m"] is None:
        return out | _plan("single", 1, None, checkpointing=False)
    options = [("lora", 1)] if lora else [("single", 1)] + [("fsdp", w) for w in FSDP_WIDTHS if w <= max_gpus]
    for strategy, workers in options:
        for checkpointing in (False, True):
            gb = finetune_memory_gb(spec, **sizing, shards=workers, checkpointing=checkpointing,
                                    lora=strategy == "lora")
            if gb <= usable:
                return out | _plan(strategy, workers, gb, checkpointing)
    lora_gb = finetune_memory_gb(spec, **sizing, checkpointing=True, lora=True)
    if lora:
        why = f"does not fit one {gpu_mem_gb:g} GB GPU even with LoRA (estimate {_round(lora_gb)} GB)"
    elif lora_gb <= usable:
        why = (f"does not fit the GPUs of one node with full fine-tuning (estimate {out['full_ft_gb']} GB); "
               f"LoRA fits ({_round(lora_gb)} GB): set lora_r in the spec's train (or --lora-r 8)")
    else:
        why = f"does not fit one node, with full fine-tuning or LoRA (estimate {out['full_ft_gb']} GB)"
    return out | _plan("none", 0, None, checkpointing=True) | {"refusal": f"{spec.name} {why}"}


def _round(gb: float | None) -> float | None:
    return None if gb is None else round(gb, 1)


def _plan(strategy: str, workers: int, gb: float | None, checkpointing: bool) -> dict[str, Any]:
    """The resource fields of :func:`trial_resources`; strategy "none": nothing fits."""
    return {
        "strategy": strategy,
        "fits": strategy != "none",
        "num_workers": workers,
        "gpus_per_worker": 1 if workers else 0,
        "gpus_per_trial": workers,
        "fsdp": strategy == "fsdp",
        "lora": strategy == "lora",
        "gradient_checkpointing": checkpointing,
        "per_gpu_gb": _round(gb),
    }


DEFAULT_PARAMS_M = 100.0  # a model of unknown size (a local directory) is costed as a base-size one


def compute_params_m(model: dict[str, Any]) -> float:
    """Millions of the parameters a token's forward pass multiplies through: ``12·L·d²`` (no embeddings).

    For a stage's model (its ``effective()`` dict). Embedding tables are
    lookups, so the 1-layer cut of MiniLM-L6 costs a sixth of the whole
    model per token, not the 0.6 its parameter counts (13.7M / 22.7M) say.
    A model of unknown shape counts all its parameters.
    """
    from w2s_ray.models import REGISTRY

    spec = REGISTRY.get(model.get("name", "")) or ModelSpec(model.get("name", ""), model.get("source", ""))
    p = params_m(spec)
    if p is None:
        return DEFAULT_PARAMS_M
    if spec.d_model is None or spec.n_layers is None:
        return p
    return 12 * (spec.num_layers or spec.n_layers) * spec.d_model ** 2 / 1e6
