"""Student losses on soft binary labels, and the auxiliary-confidence schedule.

Pure torch, no Ray: every function here is unit-tested on its own.

Targets are the probability of class 1 (``target_p1``), soft for weak labels
and 0/1 for ground truth. Logits have shape ``(n, 2)``.

The confidence loss (Burns et al. 2023, eq. 1)::

    L = (1 - a_t) * CE(f, f_w) + a_t * CE(f, hard_t(f))

``hard_t`` thresholds the student's own predictions so that the hardened
class balance equals the weak labels' balance *over the optimizer batch*,
and ``a_t`` ramps linearly from 0 to ``alpha_max`` over ``warmup_frac`` of the
steps (the reference code jumped from 0.05 to 0.5; this ramp has no jump).

Follow-up losses: ``kl`` (KL(weak ‖ student): xent minus the weak labels'
entropy, same gradient, a loss value that reaches 0), ``entropy`` (the
confidence term with soft self-labels: ``(1 - a_t)·CE(f, f_w) + a_t·H(f)``;
with a stop-gradient soft self-target the term's gradient would be exactly
zero, so the entropy keeps its gradient) and, for tiny batches, a hardening
threshold over a buffer of recent predictions (:class:`ThresholdBuffer`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def alpha_at(progress: float, alpha_max: float, warmup_frac: float) -> float:
    """alpha at ``progress`` = step / total_steps, linear from 0 to alpha_max."""
    if warmup_frac <= 0.0:
        return alpha_max
    return alpha_max * min(1.0, max(0.0, progress) / warmup_frac)


def balance_threshold(p1: torch.Tensor, pos_frac: float) -> float:
    """Threshold t such that ``(p1 > t).mean()`` equals ``pos_frac`` (to 1/n).

    The top ``round(pos_frac * n)`` predictions become positives; t sits half
    way between the last positive and the first negative, so a threshold
    computed on a whole optimizer batch can be applied to its minibatches.
    """
    values = torch.sort(p1.detach().flatten().float(), descending=True).values
    n = values.numel()
    k = int(round(float(pos_frac) * n))
    if k <= 0:
        return float(values[0])
    if k >= n:
        return float(values[-1]) - 1.0
    return float((values[k - 1] + values[k]) / 2)


def harden(p1: torch.Tensor, threshold: float) -> torch.Tensor:
    """0/1 labels from probabilities, never carrying gradient."""
    return (p1.detach() > threshold).float()


def soft_targets(target_p1: torch.Tensor) -> torch.Tensor:
    """(n,) probabilities of class 1 → (n, 2) distributions."""
    t = target_p1.float().clamp(0.0, 1.0)
    return torch.stack([1.0 - t, t], dim=-1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against (n, 2) target distributions."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


@dataclass(frozen=True)
class LossContext:
    """What a loss may know besides logits and targets.

    ``threshold`` is the batch-level hardening threshold, computed on the
    whole optimizer batch; None means "compute it from these logits", which
    is right when the minibatch is the whole batch. ``pos_frac`` is the weak
    labels' class balance over that same batch.
    """

    alpha: float = 0.0
    threshold: float | None = None
    pos_frac: float | None = None


def xent(logits: torch.Tensor, target_p1: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Cross-entropy on (soft) labels: the naive weak-to-strong loss."""
    return cross_entropy(logits, soft_targets(target_p1))


def logconf(logits: torch.Tensor, target_p1: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Auxiliary confidence loss with a balance-matched, stop-gradient hardening."""
    p1 = torch.softmax(logits.detach().float(), dim=-1)[:, 1]
    threshold = ctx.threshold
    if threshold is None:
        pos_frac = float(target_p1.float().mean()) if ctx.pos_frac is None else ctx.pos_frac
        threshold = balance_threshold(p1, pos_frac)
    hard = soft_targets(harden(p1, threshold))
    target = (1.0 - ctx.alpha) * soft_targets(target_p1) + ctx.alpha * hard
    return cross_entropy(logits, target)


def product(logits: torch.Tensor, target_p1: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """CE against the renormalised product of the student's and weak distributions."""
    joint = torch.softmax(logits.detach().float(), dim=-1) * soft_targets(target_p1)
    target = joint / joint.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return cross_entropy(logits, target)


def kl(logits: torch.Tensor, target_p1: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """KL(weak ‖ student): xent less the targets' entropy (0 when the student matches them)."""
    target = soft_targets(target_p1)
    own_entropy = -(target * target.clamp_min(1e-12).log()).sum(dim=-1).mean()
    return cross_entropy(logits, target) - own_entropy


def entropy(logits: torch.Tensor, target_p1: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """(1 - a)·CE(f, f_w) + a·H(f): confidence through the student's soft self-labels."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    own = -(log_p.exp() * log_p).sum(dim=-1).mean()
    return (1.0 - ctx.alpha) * cross_entropy(logits, soft_targets(target_p1)) + ctx.alpha * own


class ThresholdBuffer:
    """The last ``size`` student predictions and weak targets, for a hardening threshold on tiny batches.

    With a handful of rows per optimizer batch, matching the weak labels'
    class balance within the batch is noise; over a buffer of recent rows
    (the current batch included) the threshold and the balance are stable.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"threshold buffer size must be >= 1, got {size}")
        self.p1: deque[float] = deque(maxlen=size)
        self.targets: deque[float] = deque(maxlen=size)

    def update(self, p1: torch.Tensor, target_p1: torch.Tensor) -> tuple[float, float]:
        """Add a batch; → (threshold, pos_frac) over the buffer."""
        self.p1.extend(p1.detach().float().flatten().tolist())
        self.targets.extend(target_p1.detach().float().flatten().tolist())
        pos_frac = sum(self.targets) / len(self.targets)
        return balance_threshold(torch.tensor(list(self.p1)), pos_frac), pos_frac


LossFn = Callable[[torch.Tensor, torch.Tensor, LossContext], torch.Tensor]

LOSSES: dict[str, LossFn] = {"xent": xent, "logconf": logconf, "product": product, "kl": kl, "entropy": entropy}
NEEDS_BATCH_THRESHOLD: frozenset[str] = frozenset({"logconf"})


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}") from None
