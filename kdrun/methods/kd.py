"""`kd`: Hinton et al. (2015); the formula is on `kdrun.methods.losses.KDLoss`. Top-level T and alpha."""

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import KDLoss
from kdrun.methods.params import LogitParams


@register_method("kd", LogitParams)
def build(params: LogitParams, ctx: MethodContext) -> LogitLoss:
    return LogitLoss(KDLoss(ctx.T, ctx.alpha, params.logit_std))
