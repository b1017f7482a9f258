"""`kd`: Hinton et al. (2015); the formula is on `kdrun.methods.losses.KDLoss`. Top-level T and alpha, or loss.ce_weight
+ loss.kd_weight (`kdrun.methods.params.WeightedParams`)."""

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import KDLoss
from kdrun.methods.params import WeightedParams


@register_method("kd", WeightedParams)
def build(params: WeightedParams, ctx: MethodContext) -> LogitLoss:
    ce_weight, kd_weight = params.weights(ctx.alpha)
    return LogitLoss(KDLoss(ctx.T, kd_weight, params.logit_std, ce_weight))
