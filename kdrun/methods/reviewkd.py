"""`reviewkd`: knowledge review (Chen, Liu, Zhao, Jia 2021, "Distilling Knowledge via Knowledge Review", CVPR),
as in mdistiller:

    student features x_1..x_n (shallow to deep; x_n the embedding as a 1x1 map), teacher's t_1..t_n
    attention-based fusion (ABF), deep to shallow, with y_n = conv1(x_n):
        u_i = conv1(x_i)                                     (1x1 conv + BN to mid channels)
        [a, b] = sigmoid(conv1x1([u_i, up(y_{i+1})]))       (two spatial attention maps)
        y_i = u_i * a + up(y_{i+1}) * b,   out_i = conv2(resize(y_i, size of t_i))   (3x3 conv + BN)
    hierarchical context loss, per level:
        HCL(o, t) = [ mse(o, t) + sum_{l in 4,2,1; l < size} 2^-k mse(pool_l(o), pool_l(t)) ] / (1 + sum 2^-k)
    loss = CE + beta * min(epoch / warmup, 1) * sum_i HCL(out_i, t_i)     (beta = 1, warmup = 20 epochs)

Levels: the k deepest spatial stages of each model (k = the smaller count) plus the embedding: the
authors' pairing for every CIFAR zoo pair (dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py).
The authors (and mdistiller) read the teacher's pre-activation features; kdrun reads stage outputs
(the hooks' one definition for every model): docs/methods.md, "ReviewKD's features".
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods._features import FeatureMethod, adaptive_pool, batch_norm, conv, paired_spatial_stages
from kdrun.methods.base import Batch, MethodContext, register_method
from kdrun.methods.params import ReviewKDParams
from kdrun.models.stages import EMBEDDING


class ABF(nn.Module):
    """Attention-based fusion of one level with the fused deeper level (mdistiller's ABF, any 1-D/2-D)."""

    def __init__(self, nd: int, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        Conv, BN = conv(nd), batch_norm(nd)
        self.conv1 = nn.Sequential(Conv(in_channels, mid_channels, 1, bias=False), BN(mid_channels))
        self.conv2 = nn.Sequential(Conv(mid_channels, out_channels, 3, padding=1, bias=False), BN(out_channels))
        self.att_conv = nn.Sequential(Conv(mid_channels * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor], out_size: tuple[int, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, fused): out at the teacher's size for the loss; fused passed on to the next shallower level."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, :1] + residual * z[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl(outs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    total = outs[0].new_zeros(())
    for o, t in zip(outs, targets):
        loss, weight, norm = F.mse_loss(o, t), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= o.shape[2]:
                continue
            weight /= 2
            loss = loss + F.mse_loss(adaptive_pool(o, level), adaptive_pool(t, level)) * weight
            norm += weight
        total = total + loss / norm
    return total


def as_map(x: torch.Tensor, nd: int) -> torch.Tensor:
    """A stage output as (N, C, *spatial); the flat embedding becomes a 1x1 map."""
    return x.reshape(len(x), -1, *([1] * nd)) if x.dim() == 2 else x


class ReviewKD(FeatureMethod):
    def __init__(self, params: ReviewKDParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx.T)
        self.warmup = params.warmup
        s, t, s_shapes, t_shapes = paired_spatial_stages(ctx, "reviewkd")
        self.student_stages, self.teacher_stages = (*s, EMBEDDING), (*t, EMBEDDING)
        self.nd = len(s_shapes[s[0]]) - 2
        s_channels = [s_shapes[n][1] for n in s] + [s_shapes[EMBEDDING][1]]
        t_channels = [t_shapes[n][1] for n in t] + [t_shapes[EMBEDDING][1]]
        self.out_sizes = [tuple(t_shapes[n][2:]) for n in t] + [(1,) * self.nd]
        mid = min(params.max_mid_channels, s_channels[-1])
        levels = len(s_channels)
        self.abfs = nn.ModuleList(ABF(self.nd, s_channels[i], mid, t_channels[i], fuse=i < levels - 1)
                                  for i in range(levels))

    def weight(self) -> float:
        return min(self.epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0

    def review(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The fused student features, one per level (shallow to deep), each at the teacher's size."""
        outs, residual = [], None
        for i in reversed(range(len(features))):
            out, residual = self.abfs[i](features[i], residual, self.out_sizes[i])
            outs.insert(0, out)
        return outs

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        student = [as_map(batch.student_features[n], self.nd) for n in self.student_stages]
        teacher = [as_map(batch.teacher_features[n].detach(), self.nd) for n in self.teacher_stages]
        return self.weight() * hcl(self.review(student), teacher)

    def summary(self) -> dict[str, Any]:
        return {"stage_pairs": [list(pair) for pair in zip(self.student_stages, self.teacher_stages)]}


@register_method("reviewkd", ReviewKDParams)
def build(params: ReviewKDParams, ctx: MethodContext) -> ReviewKD:
    return ReviewKD(params, ctx)
