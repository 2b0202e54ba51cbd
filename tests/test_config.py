"""Config classes: which knobs reach the artifact key, strict types, and one clear error for a bad value."""

import dataclasses

import pytest
import yaml

from w2s_ray.config import ConfigError, LossConfig, Resources, SplitConfig, TrainOverrides
from w2s_ray.spec import spec_from_dict

SPEC = {"name": "t", "datasets": ["vader"], "models": ["minilm-l6-1l", "minilm-l6-2l"]}


def test_keys_only_carry_knobs_the_loss_uses():
    assert LossConfig("xent", 0.9, 0.1).effective() == {"name": "xent"}
    assert LossConfig("kl").effective() == {"name": "kl"}
    assert LossConfig("logconf", 0.5, 0.2).effective() == {"name": "logconf", "alpha_max": 0.5, "warmup_frac": 0.2}
    assert LossConfig("entropy", 0.5, 0.2).effective()["alpha_max"] == 0.5
    assert LossConfig("logconf", 0.5, 0.2, 64).effective()["threshold_buffer"] == 64


def test_labels_name_the_knobs():
    assert LossConfig("logconf", 0.75).label == "logconf(a=0.75)"
    assert LossConfig("entropy", 0.5).label == "entropy(a=0.5)"
    assert LossConfig("logconf", 0.5, 0.2, 64).label == "logconf(a=0.5,buf=64)"


@pytest.mark.parametrize("kwargs,path", [
    ({"name": "hinge"}, "name"),
    ({"name": "logconf", "alpha_max": 1.5}, "alpha_max"),
    ({"name": "logconf", "threshold_buffer": -1}, "threshold_buffer"),
    ({"name": "xent", "threshold_buffer": 32}, "threshold_buffer"),
])
def test_bad_loss_knobs_name_their_field(kwargs, path):
    with pytest.raises(ConfigError) as e:
        LossConfig(**kwargs)
    assert e.value.path == path


def test_configs_keep_positional_construction_and_take_an_int_for_a_float():
    assert SplitConfig(3, 50, 60, 70).effective() == {"seed": 3, "n_weak": 50, "n_strong": 60, "n_test": 70}
    loss = LossConfig("logconf", 1, 0)
    assert loss.alpha_max == 1.0 and isinstance(loss.alpha_max, float)
    assert dataclasses.replace(loss, alpha_max=0.25).alpha_max == 0.25
    with pytest.raises(ConfigError, match=r"alpha_max: 2.0 is outside \[0, 1\]"):
        dataclasses.replace(loss, alpha_max=2)  # replace validates too


@pytest.mark.parametrize("text,path", [
    ("n_weak: '1'", "split.n_weak"),  # no silent "1" -> 1
    ("n_weak: 1.5", "split.n_weak"),
    ("n_weak: true", "split.n_weak"),
    ("n_test: 1.0", "split.n_test"),
])
def test_yaml_ints_are_strict(text, path):
    with pytest.raises(ConfigError) as e:
        spec_from_dict({**SPEC, "split": yaml.safe_load(text)})
    assert e.value.path == path and "expected int" in e.value.message


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'0.5'", "true"])
def test_yaml_floats_are_finite_numbers(value):
    with pytest.raises(ConfigError) as e:
        spec_from_dict({**SPEC, "alpha_max": yaml.safe_load(f"[{value}]")})
    assert e.value.path == "alpha_max[0]"


def test_errors_are_config_errors_with_field_paths():
    with pytest.raises(ConfigError, match=r"^epochs: expected int, got str '2'$"):
        TrainOverrides(epochs="2")
    with pytest.raises(ConfigError, match=r"^lr: 2.0 is outside \(0, 1\)$"):
        TrainOverrides(2.0)  # a positional argument is named by its field
    with pytest.raises(ConfigError, match=r"^gpus: unknown field; allowed: address, num_cpus"):
        Resources(gpus=1)
    with pytest.raises(ConfigError, match=r"^search\.lr\[0\]: 0\.0 is outside \(0, 1\)$"):
        spec_from_dict({**SPEC, "split": {"n_val": 5}, "search": {"lr": [0.0, 0.1]}})
