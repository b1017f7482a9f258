"""`ce`: hard labels only, the baseline inside a distill sweep (the teacher is loaded for the probe only)."""

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import cross_entropy
from kdrun.methods.params import Params


@register_method("ce", Params, needs_teacher=False)
def build(params: Params, ctx: MethodContext) -> LogitLoss:
    return LogitLoss(cross_entropy, needs_teacher=False)
