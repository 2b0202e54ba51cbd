"""Images: weak-to-strong on image datasets (the paper's vision experiment: probes on frozen features).

An image dataset's rows are ``{id, text, image, label, group}``: ``image`` holds
PNG bytes and the ``id`` is their hash; ``text`` only describes the row for
people (no model reads it). Image backbones load through transformers'
``AutoModel`` + ``AutoImageProcessor`` (ViT, DINOv2, ConvNeXt, ResNet, ...);
what a probe's head sees is the backbone's ``pooler_output`` (DINOv2: the
normed CLS token; ResNet/ConvNeXt: global average pooling), else the mean of
its last hidden states. The pipeline is the text one: probe mode
(``finetune: probe``, the paper's protocol) caches features once per backbone;
full fine-tuning (Ray Train) and batch inference (Ray Data) read the ``image``
column where text runs read ``text`` (the data artifact names its input
column). Generative finetuning has no text to model and is refused.

Offline: scikit-learn's bundled 8x8 digits (``digits``: 0-4 vs 5-9) and two
tiny backbones built from seeded random weights (``resnet-tiny``,
``vit-tiny``). No pretrained vision model installs from PyPI, so nothing here
measures a vision PGR: offline runs show that the pipeline works on images,
not how well a DINO probe generalises from an AlexNet's labels.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TINY_SIZE = 16  # pixels a tiny backbone sees (digits are 8x8, upsampled)


# -- rows -------------------------------------------------------------------------------------


def png_bytes(image: Any) -> bytes:
    """A PIL image, a uint8 array (H, W) / (H, W, C) or an undecoded hub image (``{"bytes": ...}``) as PNG
    bytes: lossless, and what every row stores."""
    from PIL import Image

    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"]))
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_id(data: bytes) -> str:
    """A row's id: the hash of its image (as a text row's id is the hash of its text)."""
    return hashlib.sha1(data).hexdigest()[:16]


def digits_rows() -> Iterator[dict[str, Any]]:
    """scikit-learn's 1,797 bundled 8x8 digits as binary rows: label 1 for 5-9, 0 for 0-4."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255 grey
    for i, (img, target) in enumerate(zip(pixels, digits.target)):
        yield {"text": f"digits[{i}] (8x8 grey)", "image": png_bytes(img), "label": int(target >= 5)}


def class_pair(image_column: str, label_column: str, positive: Sequence[int],
               negative: Sequence[int]) -> Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]:
    """A hub image set's formatter: rows whose class is in ``positive`` (label 1) or ``negative`` (label 0)."""
    pos, neg = set(positive), set(negative)

    def fmt(examples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for i, ex in enumerate(examples):
            c = ex[label_column]
            if c in pos or c in neg:
                yield {"text": f"{image_column}[{i}] class {c}", "image": png_bytes(ex[image_column]),
                       "label": int(c in pos)}

    return fmt


def folder_rows(root: Path) -> Iterator[dict[str, Any]]:
    """A local image folder: ``root/0/*`` are label 0, ``root/1/*`` label 1 (any PIL-readable format)."""
    from PIL import Image

    for label in (0, 1):
        for path in sorted((root / str(label)).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    yield {"text": path.name, "image": png_bytes(im.convert("RGB")), "label": label}


def is_image_folder(path: Path) -> bool:
    return path.is_dir() and (path / "0").is_dir() and (path / "1").is_dir()


# -- backbones --------------------------------------------------------------------------------


def is_image_config(config: Any) -> bool:
    """A vision backbone's config: it has image channels and no vocabulary."""
    return hasattr(config, "num_channels") and not hasattr(config, "vocab_size")


def feature_size(config: Any) -> int:
    """Width of the pooled features (ResNet/ConvNeXt list their stage widths)."""
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(config.hidden_size)


def pooled(backbone: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(n, d) features: ``pooler_output`` where the backbone has one, else the mean of its last hidden states."""
    out = backbone(pixel_values=pixel_values)
    pooler = getattr(out, "pooler_output", None)
    if pooler is not None:
        return pooler.flatten(1)
    return out.last_hidden_state.mean(dim=1)


def encode_images(processor: Any, images: Sequence[bytes], device: torch.device) -> dict[str, torch.Tensor]:
    """PNG bytes -> the backbone's ``pixel_values`` (RGB, resized and normalised by its processor)."""
    from PIL import Image

    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    return {"pixel_values": processor(images=pil, return_tensors="pt")["pixel_values"].to(device)}


def is_image_processor(processor: Any) -> bool:
    return hasattr(processor, "preprocess") and not hasattr(processor, "pad_token")


TINY = {  # offline stand-ins: seeded random weights, so every run builds the same ones
    "resnet-tiny": ("resnet", {"num_channels": 3, "embedding_size": 16, "hidden_sizes": [16, 32],
                               "depths": [1, 1], "layer_type": "basic", "downsample_in_first_stage": False}),
    "vit-tiny": ("vit", {"num_channels": 3, "image_size": TINY_SIZE, "patch_size": 4, "hidden_size": 48,
                         "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 96}),
}


def build_tiny_backbone(name: str, out: Path) -> Path:
    """Write a tiny random-initialised backbone (seed 0) and its image processor to ``out``."""
    from transformers import AutoConfig, AutoModel, ViTImageProcessor

    model_type, kwargs = TINY[name]
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **kwargs))
    model.save_pretrained(out, safe_serialization=True)
    ViTImageProcessor(size={"height": TINY_SIZE, "width": TINY_SIZE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(out)
    return out
