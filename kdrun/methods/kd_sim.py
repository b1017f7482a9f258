"""`kd_sim`: the teacher's class-relationship matrix alone (Tang et al. 2020); see `kdrun.methods.losses.ClassSimilarityLoss`.

The matrix is the teacher's on the training set at T (computed once); logit_std standardises the student only.
"""

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import ClassSimilarityLoss
from kdrun.methods.params import LogitParams


@register_method("kd_sim", LogitParams)
def build(params: LogitParams, ctx: MethodContext) -> LogitLoss:
    return LogitLoss(ClassSimilarityLoss(ctx.T, ctx.alpha, ctx.teacher_stats.class_matrix, params.logit_std))
