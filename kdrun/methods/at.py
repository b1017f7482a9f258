"""`at`: attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR):

    a(f) = normalize_2( mean_c f_c^p ), flattened over space,   p = 2
    L_at = sum over paired stages of mean (a(f_s) - a(f_t))^2,    loss = CE + beta * L_at   (beta = 1000)

Stages are paired from the deepest (the k = min(#student, #teacher) deepest spatial stages);
when their spatial sizes differ, the larger is average-pooled to the smaller (mdistiller).
No trainable parts: attention maps need equal spatial size only, not equal channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdrun.methods._features import FeatureMethod, adaptive_pool, flat, paired_spatial_stages
from kdrun.methods.base import Batch, MethodContext, register_method
from kdrun.methods.params import ATParams


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(flat(f.pow(p).mean(1)))


def at_pair(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    s_size, t_size = f_s.shape[2:], f_t.shape[2:]
    if s_size != t_size:
        smaller = tuple(min(a, b) for a, b in zip(s_size, t_size))
        f_s, f_t = adaptive_pool(f_s, smaller), adaptive_pool(f_t, smaller)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class AttentionTransfer(FeatureMethod):
    def __init__(self, params: ATParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx.T)
        self.p = params.p
        s, t, _, _ = paired_spatial_stages(ctx, "at")
        self.student_stages, self.teacher_stages = tuple(s), tuple(t)

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        return sum(at_pair(batch.student_features[s], batch.teacher_features[t].detach(), self.p)
                   for s, t in zip(self.student_stages, self.teacher_stages))

    def summary(self) -> dict[str, Any]:
        return {"stage_pairs": [list(pair) for pair in zip(self.student_stages, self.teacher_stages)]}


@register_method("at", ATParams)
def build(params: ATParams, ctx: MethodContext) -> AttentionTransfer:
    return AttentionTransfer(params, ctx)
