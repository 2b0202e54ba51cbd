"""LoRA (peft): adapters on a real pretrained backbone; the artifact keeps adapters and head only."""

import torch

from w2s_ray.models import apply_lora, is_lora, load_classifier, load_pretrained, resolve_model, save_classifier

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None}


def _dir_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_lora_trains_adapters_and_head_only_and_reloads_to_the_same_logits(asset_home, tmp_path):
    spec = resolve_model("minilm-l6-2l")
    model, tokenizer = load_pretrained(spec)
    full_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = apply_lora(model, LORA)
    assert is_lora(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "head.weight" in names and all("lora_" in n for n in names if n != "head.weight")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 0.02 * full_trainable
    with torch.no_grad():  # move the adapters and head off their initial values, as training would
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    batch = tokenizer(["a fine film", "a dreadful, dull film"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        before = model(batch["input_ids"], batch["attention_mask"])
    save_classifier(model, tokenizer, tmp_path / "lora", {"model": spec.effective()})
    full, _ = load_pretrained(spec)
    save_classifier(full, tokenizer, tmp_path / "full", {"model": spec.effective()})
    assert _dir_bytes(tmp_path / "lora") < 0.1 * _dir_bytes(tmp_path / "full")
    assert not (tmp_path / "lora" / "backbone").exists()
    reloaded, _ = load_classifier(tmp_path / "lora")
    reloaded.eval()
    with torch.no_grad():
        after = reloaded(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(after, before)
    assert not any(p.requires_grad for n, p in reloaded.named_parameters() if "lora_" in n)
    resumed, _ = load_classifier(tmp_path / "lora", trainable=True)  # a resumed training goes on training them
    assert any(p.requires_grad for n, p in resumed.named_parameters() if "lora_" in n)
