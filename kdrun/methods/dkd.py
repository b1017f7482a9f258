"""`dkd`: decoupled KD (Zhao et al. 2022); the formula is on `kdrun.methods.losses.DKDLoss`. Top-level T; alpha unused."""


from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import DKDLoss
from kdrun.methods.params import DKDParams


@register_method("dkd", DKDParams)
def build(params: DKDParams, ctx: MethodContext) -> LogitLoss:
    return LogitLoss(DKDLoss(ctx.T, params.alpha, params.beta, params.warmup, params.logit_std))
