"""`fitnet`: FitNets hints (Romero, Ballas, Kahou, Chassang, Gatta, Bengio 2015, "FitNets: Hints for
Thin Deep Nets", ICLR):

    L_hint = mean (r(f_s) - f_t)^2,    loss = CE + beta * L_hint   (beta = 100, RepDistiller)

f_s, f_t: a middle ("hint") stage of student and teacher; r: a trained regressor (connector)
from the student's feature shape to the teacher's. As RepDistiller and mdistiller do, the hint
is trained jointly with CE in one stage (no separate hint pre-training).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdrun.methods._features import FeatureMethod, regressor, stage_shapes
from kdrun.methods.base import Batch, MethodContext, register_method
from kdrun.methods.params import FitNetParams
from kdrun.models.stages import stage_names


def middle_stage(model: torch.nn.Module) -> str:
    """RepDistiller's hint_layer=2 of [stem, stage1, stage2, stage3, pool]: the middle declared stage."""
    names = stage_names(model)
    return names[(len(names) - 1) // 2]


class FitNet(FeatureMethod):
    def __init__(self, params: FitNetParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx.T)
        student_stage = params.student_stage or middle_stage(ctx.student)
        teacher_stage = params.teacher_stage or middle_stage(ctx.teacher)
        self.student_stages, self.teacher_stages = (student_stage,), (teacher_stage,)
        s_shape = stage_shapes(ctx.student, [student_stage], ctx.sample)[student_stage]
        t_shape = stage_shapes(ctx.teacher, [teacher_stage], ctx.sample)[teacher_stage]
        self.connector = regressor(s_shape, t_shape)

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        f_s = batch.student_features[self.student_stages[0]]
        f_t = batch.teacher_features[self.teacher_stages[0]]
        return F.mse_loss(self.connector(f_s), f_t.detach())

    def summary(self) -> dict[str, Any]:
        return {"hint": {"student": self.student_stages[0], "teacher": self.teacher_stages[0]}}


@register_method("fitnet", FitNetParams)
def build(params: FitNetParams, ctx: MethodContext) -> FitNet:
    return FitNet(params, ctx)
