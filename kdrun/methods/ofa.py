"""`ofa`: One-for-All KD (Hao, Guo, Chen, Han, Zhang, Hu, Wang, Xu 2023, "One-for-All: Bridge the Gap Between
Heterogeneous Architectures in Knowledge Distillation", NeurIPS), for any pair of families:

    raw features of a CNN and a ViT live in different spaces, but logits mean the same in both. So each
    student stage s gets a projector P_s into logit space, and every projection is pulled to the teacher's
    logits z_t (which need no projector):
        OFA(z, z_t) = mean_i sum_k -[(p_t + y)^eps - y]_k log softmax(z / tau)_k,   p_t = softmax(z_t / tau)
        (y the one-hot label; eps = 1 is cross-entropy to the teacher's soft targets, eps > 1 sharpens the
        target class)
    loss = ce_weight * CE + kd_weight * OFA(z_s, z_t) + beta * sum_s OFA(P_s(f_s), z_t)

Defaults follow the authors' code (github.com/Hao840/OFAKD): every stage, eps 1, tau 1, all weights 1.
The teacher contributes logits only, so they are cached when the inputs do not change between epochs.

What differs from the authors: their projector for a CNN student is a stack of the student's own later
stages (ResNet bottlenecks, or transformer blocks for a ViT student) that brings a stage to the final
width before pooling and the linear head; here it is one 1x1 + one 3x3 conv (BN, ReLU) to the student's
final width, global pooling and a linear head, the same for every family (a ViT's tokens arrive as a map,
kdrun.models.stages). One eps for all stages (the authors allow one per stage).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods._features import all_shapes, batch_norm, conv, spatial
from kdrun.methods.base import Batch, Method, MethodContext, register_method
from kdrun.methods.losses import LossParts, maybe_standardize
from kdrun.methods.params import OFAParams
from kdrun.models.stages import EMBEDDING


def ofa_loss(z_s: torch.Tensor, z_t: torch.Tensor, one_hot: torch.Tensor, eps: float, tau: float) -> torch.Tensor:
    """OFA's modulated soft-target cross-entropy (the authors' `ofa_loss`, in log space)."""
    target = (F.softmax(z_t / tau, dim=1) + one_hot).pow(eps) - one_hot
    return -(target * F.log_softmax(z_s / tau, dim=1)).sum(1).mean()


def logit_projector(shape: tuple[int, ...], width: int, num_classes: int) -> nn.Module:
    """A stage's features (N, C, *spatial) or (N, C) -> (N, num_classes) logits."""
    if len(shape) < 3:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape[1:]), num_classes))
    nd, channels = len(shape) - 2, shape[1]
    Conv, BN = conv(nd), batch_norm(nd)
    pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[nd - 1](1)
    return nn.Sequential(Conv(channels, width, 1, bias=False), BN(width), nn.ReLU(),
                         Conv(width, width, 3, padding=1, bias=False), BN(width), nn.ReLU(),
                         pool, nn.Flatten(), nn.Linear(width, num_classes))


class OFA(Method):
    def __init__(self, params: OFAParams, ctx: MethodContext) -> None:
        super().__init__()
        shapes = all_shapes(ctx.student, ctx.sample)
        stages = spatial(shapes) or [EMBEDDING]  # a model without a stage pyramid: its embedding
        width = math.prod(shapes[EMBEDDING][1:])
        self.student_stages = tuple(stages)
        self.projectors = nn.ModuleDict({name: logit_projector(shapes[name], width, ctx.num_classes)
                                         for name in stages})
        self.ce_weight, self.kd_weight, self.beta = params.ce_weight, params.kd_weight, params.beta
        self.eps, self.tau, self.logit_std, self.num_classes = params.eps, params.temperature, params.logit_std, ctx.num_classes

    def forward(self, batch: Batch) -> LossParts:
        ce = F.cross_entropy(batch.logits, batch.labels)
        z_t = maybe_standardize(batch.teacher_logits.detach(), self.logit_std)
        one_hot = F.one_hot(batch.labels, self.num_classes).to(z_t.dtype)
        distill = self.kd_weight * ofa_loss(maybe_standardize(batch.logits, self.logit_std), z_t, one_hot,
                                            self.eps, self.tau)
        for name, projector in self.projectors.items():
            z = maybe_standardize(projector(batch.student_features[name]), self.logit_std)
            distill = distill + self.beta * ofa_loss(z, z_t, one_hot, self.eps, self.tau)
        return LossParts(self.ce_weight * ce + distill, ce, distill)

    def summary(self) -> dict[str, Any]:
        return {"projected_stages": list(self.student_stages)}


@register_method("ofa", OFAParams)
def build(params: OFAParams, ctx: MethodContext) -> OFA:
    return OFA(params, ctx)
