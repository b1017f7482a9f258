"""`kd_sim`: the teacher's class-relationship matrix alone (Tang et al. 2020); see `kdrun.methods.losses.ClassSimilarityLoss`.

The matrix is the teacher's on the training set at T (computed once); logit_std standardises the student only.
"""

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import ClassSimilarityLoss
from kdrun.methods.params import WeightedParams


@register_method("kd_sim", WeightedParams)
def build(params: WeightedParams, ctx: MethodContext) -> LogitLoss:
    ce_weight, kd_weight = params.weights(ctx.alpha)
    return LogitLoss(ClassSimilarityLoss(ctx.T, kd_weight, ctx.teacher_stats.class_matrix, params.logit_std, ce_weight))
