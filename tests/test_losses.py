"""Loss math: the invariants of xent, logconf and its schedule."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from w2s_ray.losses import (
    LossContext,
    ThresholdBuffer,
    alpha_at,
    balance_threshold,
    cross_entropy,
    entropy,
    harden,
    kl,
    logconf,
    product,
    soft_targets,
    xent,
)


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.rand(n, generator=g)


def test_logconf_with_alpha_zero_equals_xent():
    logits, weak = _batch(32)
    assert torch.allclose(logconf(logits, weak, LossContext(alpha=0.0)), xent(logits, weak, LossContext()))


def test_xent_matches_torch_cross_entropy_on_soft_targets():
    logits, weak = _batch(16)
    expected = torch.nn.functional.cross_entropy(logits, soft_targets(weak))
    assert torch.allclose(xent(logits, weak, LossContext()), expected)


def test_logconf_is_the_weighted_sum_of_two_cross_entropies():
    logits, weak = _batch(64, seed=1)
    alpha = 0.3
    p1 = torch.softmax(logits, -1)[:, 1]
    hard = harden(p1, balance_threshold(p1, float(weak.mean())))
    expected = (1 - alpha) * cross_entropy(logits, soft_targets(weak)) + alpha * cross_entropy(
        logits, soft_targets(hard)
    )
    assert torch.allclose(logconf(logits, weak, LossContext(alpha=alpha)), expected, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 256), pos_frac=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_hardened_balance_equals_weak_balance(n, pos_frac, seed):
    p1 = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    hard = harden(p1, balance_threshold(p1, pos_frac))
    assert int(hard.sum()) == round(pos_frac * n)


def test_threshold_from_the_batch_applies_to_its_minibatches():
    p1 = torch.rand(64, generator=torch.Generator().manual_seed(3))
    t = balance_threshold(p1, 0.25)
    parts = torch.cat([harden(c, t) for c in p1.split(16)])
    assert int(parts.sum()) == 16


@given(alpha_max=st.floats(0.0, 1.0), warmup=st.floats(0.01, 1.0))
def test_alpha_ramp_is_linear_and_reaches_alpha_max_at_warmup(alpha_max, warmup):
    assert alpha_at(0.0, alpha_max, warmup) == 0.0
    assert abs(alpha_at(warmup / 2, alpha_max, warmup) - alpha_max / 2) < 1e-9
    assert abs(alpha_at(warmup, alpha_max, warmup) - alpha_max) < 1e-9
    assert alpha_at(1.0, alpha_max, warmup) == alpha_max


def test_alpha_ramp_has_no_jump():
    steps = 1000
    values = [alpha_at(s / steps, 0.75, 0.2) for s in range(steps + 1)]
    jumps = [b - a for a, b in zip(values, values[1:])]
    assert max(jumps) <= 0.75 / (0.2 * steps) + 1e-12
    assert min(jumps) >= 0.0


def test_gradient_does_not_flow_through_hardened_target():
    """With alpha=1 the target is a constant one-hot: the gradient is softmax - onehot."""
    logits, weak = _batch(8, seed=2)
    logits.requires_grad_(True)
    loss = logconf(logits, weak, LossContext(alpha=1.0))
    loss.backward()
    p = torch.softmax(logits.detach(), -1)
    hard = harden(p[:, 1], balance_threshold(p[:, 1], float(weak.mean())))
    expected = (p - soft_targets(hard)) / len(weak)
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_explicit_batch_threshold_is_used_over_minibatch_statistics():
    logits, weak = _batch(8, seed=4)
    # a threshold of 2 hardens everything to class 0, whatever the minibatch holds
    loss = logconf(logits, weak, LossContext(alpha=1.0, threshold=2.0))
    assert torch.allclose(loss, cross_entropy(logits, soft_targets(torch.zeros(8))))


def test_product_target_is_detached_and_normalised():
    logits, weak = _batch(16, seed=5)
    logits.requires_grad_(True)
    loss = product(logits, weak, LossContext())
    loss.backward()
    joint = torch.softmax(logits.detach(), -1) * soft_targets(weak)
    target = joint / joint.sum(-1, keepdim=True)
    expected = (torch.softmax(logits.detach(), -1) - target) / 16
    assert torch.allclose(logits.grad, expected, atol=1e-6)


# -- follow-up losses ---------------------------------------------------------------------------


def _grad(fn, logits, weak, ctx=None):
    z = logits.clone().requires_grad_(True)
    fn(z, weak, ctx or LossContext()).backward()
    return z.grad


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 64), st.integers(0, 10_000))
def test_kl_is_non_negative_and_has_the_xent_gradient(n, seed):
    logits, weak = _batch(n, seed)
    assert float(kl(logits, weak, LossContext())) >= -1e-5
    assert torch.allclose(_grad(kl, logits, weak), _grad(xent, logits, weak), atol=1e-6)


def test_kl_is_zero_when_the_student_matches_the_weak_labels():
    weak = torch.tensor([0.1, 0.7, 0.5, 0.99])
    logits = torch.log(soft_targets(weak))
    assert abs(float(kl(logits, weak, LossContext()))) < 1e-5


def test_entropy_with_alpha_zero_equals_xent_and_alpha_one_is_the_students_entropy():
    logits, weak = _batch(32, seed=3)
    assert torch.allclose(entropy(logits, weak, LossContext(alpha=0.0)), xent(logits, weak, LossContext()))
    p = torch.softmax(logits, -1)
    own = -(p * p.log()).sum(-1).mean()
    assert torch.allclose(entropy(logits, weak, LossContext(alpha=1.0)), own, atol=1e-6)


def test_entropy_term_pushes_towards_confidence():
    """Its gradient moves every logit margin away from 0 (a soft self-label with stop-gradient would not move it)."""
    logits = torch.tensor([[0.3, -0.2], [-0.4, 0.1]])
    g = _grad(entropy, logits, torch.tensor([0.5, 0.5]), LossContext(alpha=1.0))
    margin = logits[:, 1] - logits[:, 0]
    step = -(g[:, 1] - g[:, 0])  # gradient descent's change of the margin
    assert torch.all(torch.sign(step) == torch.sign(margin))
    stopped = _grad(lambda z, t, c: cross_entropy(z, torch.softmax(z.detach(), -1)), logits, torch.zeros(2))
    assert torch.allclose(stopped, torch.zeros_like(stopped), atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(8, 64), st.integers(0, 10_000))
def test_threshold_buffer_balances_over_the_buffer_and_keeps_its_size(batch, size, seed):
    g = torch.Generator().manual_seed(seed)
    buffer = ThresholdBuffer(size)
    for _ in range(20):
        p1, weak = torch.rand(batch, generator=g), (torch.rand(batch, generator=g) > 0.3).float()
        threshold, pos_frac = buffer.update(p1, weak)
    assert len(buffer.p1) == len(buffer.targets) == min(size, 20 * batch)
    recent = torch.tensor(list(buffer.p1))
    assert pos_frac == sum(buffer.targets) / len(buffer.targets)
    assert abs(float((recent > threshold).float().mean()) - pos_frac) <= 1.0 / len(recent) + 1e-9


def test_threshold_buffer_rejects_a_bad_size():
    import pytest

    with pytest.raises(ValueError, match="buffer"):
        ThresholdBuffer(0)
