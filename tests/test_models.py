"""Masked pooling, the zero-initialised head, model name resolution."""

import pytest
import torch

from w2s_ray.config import ConfigError
from w2s_ray.models import Classifier, enable_checkpointing, infer_pooling, pool, resolve_model


def test_mean_pool_ignores_padding_values():
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool(h, mask, "mean")
    h2 = h.clone()
    h2[0, 3:] = 1e6  # garbage under the padding
    assert torch.allclose(pool(h2, mask, "mean"), pooled)
    assert torch.allclose(pooled[0], h[0, :3].mean(0))


def test_last_pool_takes_last_real_token_for_right_and_left_padding():
    h = torch.randn(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(pool(h, right, "last")[0], h[0, 2])
    assert torch.equal(pool(h, left, "last")[0], h[0, 4])
    assert torch.equal(pool(h, right, "last")[1], h[1, 4])


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return GPT2Model(cfg)


def test_decoder_pooling_is_not_fooled_by_token_id_zero():
    """The reference pooled at (ids != 0).sum() - 1; id 0 is '!' in GPT-2's vocabulary."""
    backbone = _tiny_gpt2()
    assert infer_pooling(backbone.config) == "last"
    model = Classifier(backbone, "last")
    torch.nn.init.normal_(model.head.weight)
    ids = torch.tensor([[5, 0, 7, 0]])  # real tokens, two of them id 0
    alone = model(ids, torch.ones_like(ids))
    padded_ids = torch.tensor([[5, 0, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    padded_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert torch.allclose(model(padded_ids, padded_mask)[0], alone[0], atol=1e-5)


def test_head_starts_at_zero_so_first_predictions_are_uniform():
    model = Classifier(_tiny_gpt2(), "last")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids, torch.ones_like(ids)), torch.zeros(1, 2))


def test_head_computes_in_fp32_under_bf16_autocast():
    """Autocast would run the Linear head in bf16 despite a .float() input; the GPU path relies on fp32 logits."""
    model = Classifier(_tiny_gpt2(), "last")
    torch.nn.init.normal_(model.head.weight)
    ids = torch.tensor([[1, 2, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, torch.ones_like(ids))
    assert logits.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the fix guards against
        assert model.head(torch.ones(1, 16)).dtype == torch.bfloat16


def test_resolve_model_names_paths_and_hub_ids(tmp_path):
    assert resolve_model("minilm-l6").source == "offline:minilm-l6"
    assert resolve_model("minilm-l6-1l").num_layers == 1
    assert resolve_model("hub:gpt2").source == "hub:gpt2"
    assert resolve_model("EleutherAI/pythia-70m").source == "hub:EleutherAI/pythia-70m"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).source == f"path:{tmp_path.resolve()}"


def test_bad_model_values_name_the_field_and_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"weak: unknown model 'tiny'.*minilm-l3"):
        resolve_model("tiny", "weak")
    with pytest.raises(ConfigError, match="weak: model path './no/such/dir' does not exist"):
        resolve_model("./no/such/dir", "weak")
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model(str(tmp_path), "strong")


def test_checkpointing_is_enabled_without_the_deprecated_call(recwarn):
    backbone = _tiny_gpt2()
    enable_checkpointing(backbone)
    assert not [str(w.message) for w in recwarn if "checkpointing" in str(w.message).lower()]
    assert getattr(backbone, "is_activation_checkpointing", None) or backbone.is_gradient_checkpointing
