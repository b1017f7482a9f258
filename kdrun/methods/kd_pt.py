"""`kd_pt`: the teacher's true-class probability alone (Tang et al. 2020); see `kdrun.methods.losses.TrueClassProbLoss`."""

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import TrueClassProbLoss
from kdrun.methods.params import LogitParams


@register_method("kd_pt", LogitParams)
def build(params: LogitParams, ctx: MethodContext) -> LogitLoss:
    return LogitLoss(TrueClassProbLoss(ctx.T, ctx.alpha, ctx.num_classes, params.logit_std))
