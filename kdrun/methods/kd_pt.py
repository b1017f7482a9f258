"""`kd_pt`: the teacher's true-class probability alone (Tang et al. 2020); see `kdrun.methods.losses.TrueClassProbLoss`."""

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import TrueClassProbLoss
from kdrun.methods.params import WeightedParams


@register_method("kd_pt", WeightedParams)
def build(params: WeightedParams, ctx: MethodContext) -> LogitLoss:
    ce_weight, kd_weight = params.weights(ctx.alpha)
    return LogitLoss(TrueClassProbLoss(ctx.T, kd_weight, ctx.num_classes, params.logit_std, ce_weight))
