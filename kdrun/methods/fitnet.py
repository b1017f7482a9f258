"""`fitnet`: FitNets hints (Romero, Ballas, Kahou, Chassang, Gatta, Bengio 2015, "FitNets: Hints for
Thin Deep Nets", ICLR):

    L_hint = mean (r(f_s) - f_t)^2,    loss = CE + beta * L_hint   (beta = 100, RepDistiller)

f_s, f_t: a middle ("hint") stage of student and teacher; r: a trained regressor (connector)
from the student's feature shape to the teacher's. As RepDistiller and mdistiller do, the hint
is trained jointly with CE in one stage (no separate hint pre-training).

Across families (a ViT's token map against a CNN's stage: kdrun.core.families) raw features differ in
scale and layout, so both sides meet in a shared space: the student map pooled to the teacher's grid and
mapped to its width by a 1x1 conv, then both layer-normalised over channels (no parameters, so the teacher
side cannot collapse) before the squared error.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods._features import FeatureMethod, adaptive_pool, conv, regressor, stage_shapes
from kdrun.methods.base import Batch, MethodContext, register_method
from kdrun.methods.params import FitNetParams
from kdrun.models.stages import family, stage_names


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """Layer norm over channels at every position, without parameters: (N, C, *spatial) or (N, C)."""
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


class SharedSpace(nn.Module):
    """A student feature in the teacher's grid and width, channel-normalised (the teacher's side is only normalised)."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.maps = len(s_shape) == len(t_shape) >= 3  # else a vector each: the map's channel means
        self.grid = tuple(t_shape[2:])
        self.project = (conv(len(s_shape) - 2)(s_shape[1], t_shape[1], 1) if self.maps
                        else nn.Linear(s_shape[1], t_shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_norm(self.project(adaptive_pool(x, self.grid) if self.maps else vector(x)))

    def teacher(self, f_t: torch.Tensor) -> torch.Tensor:
        return channel_norm(f_t if self.maps else vector(f_t))


def vector(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C) by the mean over positions; (N, C) as it is."""
    return x.flatten(2).mean(2) if x.dim() > 2 else x


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
        self.shared = family(ctx.student) != family(ctx.teacher)
        self.connector = SharedSpace(s_shape, t_shape) if self.shared else regressor(s_shape, t_shape)

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        f_s = batch.student_features[self.student_stages[0]]
        f_t = batch.teacher_features[self.teacher_stages[0]].detach()
        return F.mse_loss(self.connector(f_s), self.connector.teacher(f_t) if self.shared else f_t)

    def summary(self) -> dict[str, Any]:
        return {"hint": {"student": self.student_stages[0], "teacher": self.teacher_stages[0],
                         "shared_space": self.shared}}


@register_method("fitnet", FitNetParams)
def build(params: FitNetParams, ctx: MethodContext) -> FitNet:
    return FitNet(params, ctx)
