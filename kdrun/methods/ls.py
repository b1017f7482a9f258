"""`ls`: label smoothing as a synthetic teacher (Tang et al. 2020); see `kdrun.methods.losses.LabelSmoothingLoss`."""

from typing import Any

from kdrun.methods.base import LogitLoss, MethodContext, register_method
from kdrun.methods.losses import LabelSmoothingLoss
from kdrun.methods.params import LSParams


class LabelSmoothing(LogitLoss):
    def __init__(self, loss: LabelSmoothingLoss, source: str) -> None:
        super().__init__(loss)
        self.source = source

    def summary(self) -> dict[str, Any]:
        return {"epsilon": self.loss.epsilon, "epsilon_source": self.source}


@register_method("ls", LSParams)
def build(params: LSParams, ctx: MethodContext) -> LabelSmoothing:
    from_teacher = params.epsilon is None
    epsilon = ctx.teacher_stats.epsilon if from_teacher else params.epsilon
    source = f"the teacher's mean non-target mass at T={ctx.T:g}" if from_teacher else "loss.epsilon"
    ce_weight, kd_weight = params.weights(ctx.alpha)
    return LabelSmoothing(LabelSmoothingLoss(ctx.T, kd_weight, ctx.num_classes, epsilon, params.logit_std, ce_weight),
                          source)
