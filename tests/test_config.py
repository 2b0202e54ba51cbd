"""Loss configuration: which knobs reach the artifact key, and clear errors for bad ones."""

import pytest

from w2s_ray.config import ConfigError, LossConfig


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
    ({"name": "hinge"}, "loss"),
    ({"name": "logconf", "alpha_max": 1.5}, "alpha_max"),
    ({"name": "logconf", "threshold_buffer": -1}, "threshold_buffer"),
    ({"name": "xent", "threshold_buffer": 32}, "threshold_buffer"),
])
def test_bad_loss_knobs_name_their_field(kwargs, path):
    with pytest.raises(ConfigError) as e:
        LossConfig(**kwargs)
    assert e.value.path == path
