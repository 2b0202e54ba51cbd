"""Generative finetuning: masking, the objective per architecture, the plan's sharing, and no label is read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from w2s_ray.adapt import IGNORE, mask_tokens, objective_of
from w2s_ray.config import ExperimentConfig, GenerativeFinetune, LossConfig, SearchConfig, SplitConfig
from w2s_ray.plan import plan_experiments

ADAPT = GenerativeFinetune(epochs=1, lr=1e-4, max_len=16, batch_size=8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 24), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_masking_targets_only_real_tokens_and_keeps_the_rest(rows, cols, prob, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (rows, cols), generator=g)
    special = torch.rand(rows, cols, generator=g) < 0.3
    inputs, labels = mask_tokens(ids, special, mask_id=3, vocab_size=100, prob=prob, generator=g)
    target = labels != IGNORE
    assert not (target & special).any()  # padding and special tokens are never targets
    assert torch.equal(labels[target], ids[target])  # a target's label is the original token
    assert torch.equal(inputs[~target], ids[~target])  # nothing else is touched
    if prob == 0.0:
        assert not target.any()


def test_masking_follows_bert_proportions():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 100), generator=g)
    inputs, labels = mask_tokens(ids, torch.zeros_like(ids, dtype=torch.bool), 3, 1000, 0.15, g)
    target = labels != IGNORE
    assert abs(target.float().mean().item() - 0.15) < 0.01
    masked = (inputs == 3) & target
    assert abs(masked.sum().item() / target.sum().item() - 0.8) < 0.03


def test_objective_follows_the_architecture():
    from transformers import BertConfig, GPT2Config

    assert objective_of(BertConfig()) == "mlm"
    assert objective_of(GPT2Config()) == "causal"


def _cells(**kw):
    split = SplitConfig(0, 50, 50, 50, n_val=20)
    base = ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6", split=split, **kw)
    return [base, base.replace(loss=LossConfig("logconf", 0.5, 0.2)),
            base.replace(weak="minilm-l6-2l"), base.replace(search=SearchConfig(num_samples=2))]


def test_one_adaptation_serves_the_ceiling_and_every_student_and_other_keys_stay():
    plain, adapted = plan_experiments(_cells()), plan_experiments(_cells(generative_finetune=ADAPT))
    adapts = [s for s in adapted.stages.values() if s.kind == "adapt"]
    assert len(adapts) == 1 and adapts[0].params["splits"] == ["A", "B"]  # texts of the training halves only
    key = adapts[0].key
    strong = [s for s in adapted.stages.values() if s.role in ("ceiling", "student", "search")]
    assert len(strong) == 1 + 3 + 1 and all(s.inputs.get("init") == key for s in strong)
    weak = [s for s in adapted.stages.values() if s.role == "weak"]
    assert len(weak) == 2 and all("init" not in s.inputs for s in weak)
    # stages the adaptation does not feed keep their keys; a plan without it has no adapt stage and no init
    assert {s.key for s in weak} <= set(plain.stages)
    assert not any(s.kind == "adapt" or "init" in s.inputs for s in plain.stages.values())
    other = plan_experiments(_cells(generative_finetune=dataclasses.replace(ADAPT, lr=2e-4)))
    assert {s.key for s in other.stages.values() if s.kind == "adapt"} != {key}  # keyed by its hyperparameters


def test_a_probe_strong_model_refuses_generative_finetuning():
    from w2s_ray.config import ConfigError

    with pytest.raises(ConfigError, match="generative_finetune"):
        ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6", finetune="probe",
                         generative_finetune=ADAPT)


@pytest.mark.ray
def test_adaptation_reads_no_labels_and_is_what_a_training_starts_from(ray_cluster, tmp_path):
    """Every label of the dataset flipped and permuted: the adapted backbone is the same bit for bit; a
    ceiling or student of the adapted model starts from exactly those weights."""
    from safetensors.numpy import load_file

    from w2s_ray.adapt import BACKBONE_DIR
    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.config import Resources
    from w2s_ray.data import load_rows, resolve_dataset
    from w2s_ray.engine.scheduler import execute
    from w2s_ray.models import load_pretrained, resolve_model
    from w2s_ray.plan import Plan, adapt_stage, data_stage, rows_stage

    split = SplitConfig(0, 24, 24, 16)
    rows = load_rows(resolve_dataset("vader"))[["text", "label"]].iloc[:80].reset_index(drop=True)
    files = {"clean": tmp_path / "clean.parquet", "shuffled": tmp_path / "shuffled.parquet"}
    rows.to_parquet(files["clean"], index=False)
    flipped = rows.assign(label=np.random.default_rng(1).permutation(1 - rows["label"].to_numpy()))
    assert (flipped["label"] != rows["label"]).any()
    flipped.to_parquet(files["shuffled"], index=False)
    model = resolve_model("minilm-l6-1l")
    weights, histories = {}, {}
    for name, path in files.items():  # through the scheduler: the adapt stage runs in a Tune trial
        store = ArtifactStore(str(tmp_path / name / "store"))
        plan = Plan()
        data = plan.add(data_stage(plan.add(rows_stage(resolve_dataset(str(path)), split)), split))
        stage = plan.add(adapt_stage(model, GenerativeFinetune(epochs=2, lr=1e-3, max_len=16, batch_size=8), 0,
                                     data))
        report = execute(plan, store, Resources(), str(tmp_path / name / "ray"), progress=lambda _: None)
        assert set(report.ran) == {data.inputs["rows"], data.key, stage.key} and not report.failed
        meta = store.manifest(stage.key).meta
        backbone = store.local_dir(stage.key) / BACKBONE_DIR
        weights[name] = {k: v for f in sorted(backbone.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
        histories[name] = [h["lm_loss"] for h in meta["history"]]
    clean, shuffled = weights["clean"], weights["shuffled"]
    assert len(clean) > 5 and clean.keys() == shuffled.keys()
    assert all(np.array_equal(clean[k], shuffled[k]) for k in clean)
    assert histories["clean"] == histories["shuffled"] and all(np.isfinite(histories["clean"]))
    pretrained, _ = load_pretrained(model)
    started, _ = load_pretrained(model, backbone)  # what train_loop_per_worker does with an ``init`` input
    state = {k: v.numpy() for k, v in started.backbone.state_dict().items()}
    assert all(np.array_equal(state[k], clean[k]) for k in clean if k in state)
    moved = [k for k in clean if k in state and not torch.equal(pretrained.backbone.state_dict()[k],
                                                                   torch.from_numpy(clean[k]))]
    assert moved, "the adaptation changed no backbone weight"
