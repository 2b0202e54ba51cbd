"""Generative finetuning (paper §5.2.2): adapt a strong model to the task's texts before it sees a label.

An ``adapt`` stage trains a pretrained model on the unlabelled texts of the
training halves A and B (never test, never a label column: the worker reads
the ``text`` column only) with the objective its architecture supports:
masked LM for encoders (BERT, MPNet), causal LM for decoders (GPT-2, Pythia,
Qwen). Its backbone is the starting point of the ceiling and of every student
of that strong model (the paper adapts both), so one adaptation serves every
loss, alpha and weak model of a (data, model) pair.

The offline MiniLM and MPNet are sentence-transformers checkpoints: they ship
the encoder only. Their masked-LM head is built by transformers: the decoder
is tied to the word embeddings (pretrained), the transform (dense + LayerNorm)
and the output bias start at random / zero, so the first steps train that
transform as much as they adapt the encoder. Decoders keep their pretrained
LM head (tied to the embeddings).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2s_ray.models import BACKBONE_DIR, ModelSpec, infer_pooling, model_spec, resolve_source

IGNORE = -100  # label of a position the loss skips


def objective_of(config: Any) -> str:
    """``causal`` for a decoder, ``mlm`` for an encoder (the pooling rule tells them apart)."""
    return "causal" if infer_pooling(config) == "last" else "mlm"


def load_lm(spec: ModelSpec) -> tuple[torch.nn.Module, Any, str]:
    """The pretrained model with its LM head (masked or causal), its tokenizer and the objective."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from w2s_ray.models import _no_dropout

    src = resolve_source(spec.source)
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    config = AutoConfig.from_pretrained(src, **kwargs)
    _no_dropout(config)  # as the classifier trains: the adapted weights see the same network
    if spec.num_layers is not None:
        config.num_hidden_layers = spec.num_layers
    objective = objective_of(config)
    auto = AutoModelForCausalLM if objective == "causal" else AutoModelForMaskedLM
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # an encoder-only checkpoint "misses" its MLM transform by design
    try:
        model = auto.from_pretrained(src, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, objective


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int, prob: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``prob`` of the real tokens become targets; of those 80% [MASK], 10% random, 10% kept.

    ``special`` marks padding and special tokens, which are never targets. → (inputs, labels).
    """
    draw = torch.rand(input_ids.shape, generator=generator)
    target = (draw < prob) & ~special
    labels = torch.where(target, input_ids, torch.full_like(input_ids, IGNORE))
    how = torch.rand(input_ids.shape, generator=generator)
    inputs = input_ids.clone()
    inputs[target & (how < 0.8)] = mask_id
    swap = target & (how >= 0.8) & (how < 0.9)
    inputs[swap] = torch.randint(vocab_size, input_ids.shape, generator=generator)[swap]
    return inputs, labels


def lm_batch(tokenizer: Any, texts: list[str], max_len: int, objective: str, prob: float,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Model inputs and LM labels for one batch of texts."""
    enc = tokenizer(list(texts), max_length=max_len, truncation=True, padding=True, return_tensors="pt",
                    return_special_tokens_mask=objective == "mlm")
    ids, attention = enc["input_ids"], enc["attention_mask"]
    if objective == "causal":  # the model shifts labels itself; padding is not a target
        return {"input_ids": ids, "attention_mask": attention,
                "labels": ids.masked_fill(attention == 0, IGNORE)}
    special = enc["special_tokens_mask"].bool() | (attention == 0)
    inputs, labels = mask_tokens(ids, special, tokenizer.mask_token_id, len(tokenizer), prob, generator)
    return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


@dataclass(frozen=True)
class AdaptLoopConfig:
    """What an adaptation worker needs, as plain values (it crosses process boundaries)."""

    model: dict[str, Any]
    adapt: dict[str, Any]  # config.GenerativeFinetune as a dict
    seed: int
    texts: list[str]  # parquet URIs of the training halves; only their ``text`` column is read
    torch_threads: int | None = None


def read_texts(uris: list[str]) -> list[str]:
    """The ``text`` column of each table, in id order: no other column is ever read."""
    from w2s_ray.ingest import read_table

    out: list[str] = []
    for uri in uris:
        table = read_table(uri, ["id", "text"]).sort_by("id")
        out += table.column("text").to_pylist()
    return out


def adapt_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker loop of an adaptation: LM loss on the texts, then the backbone as the checkpoint."""
    import ray.train
    import ray.train.torch

    from w2s_ray.train import cosine_schedule, precision

    cfg = AdaptLoopConfig(**config)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    model, tokenizer, objective = load_lm(model_spec(cfg.model))
    texts = read_texts(cfg.texts)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    a = cfg.adapt
    mine = np.arange(rank, len(texts), world)  # this worker's rows
    steps_per_epoch = math.ceil(len(mine) / a["batch_size"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a["lr"])
    scheduler = cosine_schedule(optimizer, a["epochs"] * steps_per_epoch)
    model.train()
    history = []
    for epoch in range(a["epochs"]):
        t0, losses = time.perf_counter(), []
        order = mine[np.random.default_rng(cfg.seed * 1009 + epoch).permutation(len(mine))]
        for i in range(0, len(order), a["batch_size"]):
            batch = lm_batch(tokenizer, [texts[j] for j in order[i:i + a["batch_size"]]], a["max_len"], objective,
                             a["mask_prob"], generator)
            with precision(device):
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.detach())
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "epochs": a["epochs"], "lm_loss": float(torch.stack(losses).mean()),
                        "objective_kind": objective, "rows": len(mine), "epoch_s": seconds,
                        **({"setup_s": t0 - started} if epoch == 0 else {})})
        last = epoch + 1 == a["epochs"]
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0 and last:  # the backbone without its LM head: what a classifier starts from
                base = getattr(model, "module", model).base_model
                base.save_pretrained(Path(tmp) / BACKBONE_DIR, safe_serialization=True)
                tokenizer.save_pretrained(Path(tmp) / BACKBONE_DIR)
                (Path(tmp) / "history.json").write_text(json.dumps(history, indent=1))
                ray.train.report(history[-1], checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(history[-1])


def fit_adapt_stage(stage: Any, store: Any, resources: Any, storage_path: str,
                    torch_threads: int | None = None) -> dict[str, Any]:
    """Run an ``adapt`` stage as a TorchTrainer and commit the adapted backbone."""
    from w2s_ray.train import run_train

    params, data_key = stage.params, stage.inputs["data"]
    loop = AdaptLoopConfig(model=params["model"], adapt=params["adapt"], seed=params["seed"],
                           texts=[store.data_uri(data_key, f"{s}.parquet") for s in params["splits"]],
                           torch_threads=torch_threads)
    t0 = time.perf_counter()
    result = run_train(adapt_loop_per_worker, loop.__dict__, stage.key, resources, storage_path,
                       resources.num_workers)
    seconds = time.perf_counter() - t0
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / "history.json").read_text())
        meta = {"stage": stage.name, "params": params, "inputs": stage.inputs, "seconds": seconds,
                "torch_threads": torch_threads, "history": history}
        store.commit(stage.key, Path(d), meta)
    return meta
