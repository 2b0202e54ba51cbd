"""Stage kinds: one module per family, each defining its kinds' parameters, builders and runners.

Importing this package registers every built-in kind in :data:`KINDS`.
"""

from w2s_ray.stages import data, heads, inference, search, supervisors, training  # noqa: F401 (registers them)
from w2s_ray.stages.base import KINDS, Meta, Stage, StageContext, StageKind, kind_of, register, unregister

__all__ = ["KINDS", "Meta", "Stage", "StageContext", "StageKind", "kind_of", "register", "unregister"]
