"""What the feature methods share: stage shapes, stage pairing across families, connectors, the
CE (+ optional KD) + beta * feature-loss combination of RepDistiller and mdistiller.

Feature methods read named stages (kdrun.models.stages) of both models, so the teacher runs live
on every batch (its features are not cached, unlike its logits).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.methods.base import Batch, Method, MethodContext
from kdrun.methods.losses import LossParts, maybe_standardize, soft_kl
from kdrun.methods.params import FeatureParams
from kdrun.models.stages import EMBEDDING, stage_names, tap


class FeatureMethod(Method):
    """loss = ce_weight * CE + kd_weight * T^2 KL(p_t || p_s) + beta * feature_loss(batch)."""

    def __init__(self, params: FeatureParams, T: float) -> None:
        super().__init__()
        self.ce_weight, self.kd_weight, self.beta = params.ce_weight, params.kd_weight, params.beta
        self.T, self.logit_std = T, params.logit_std

    def feature_loss(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> LossParts:
        ce = F.cross_entropy(batch.logits, batch.labels)
        distill = self.beta * self.feature_loss(batch)
        if self.kd_weight > 0:
            zs = maybe_standardize(batch.logits, self.logit_std)
            zt = maybe_standardize(batch.teacher_logits.detach(), self.logit_std)
            distill = distill + self.kd_weight * soft_kl(zs, zt, self.T) * self.T**2
        return LossParts(self.ce_weight * ce + distill, ce, distill)


def stage_shapes(model: nn.Module, names: list[str], sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named stages on `sample`, in eval mode (no batch-norm statistics change)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), tap(model, names) as features:
        model(sample)
    model.train(was_training)
    return {name: tuple(features[name].shape) for name in names}


def all_shapes(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
    return stage_shapes(model, stage_names(model), sample)


def spatial(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Stages with a spatial extent (N, C, L) or (N, C, H, W), shallow to deep; the stem and the embedding
    excluded, as mdistiller's AT and ReviewKD read feats[1:]."""
    return [name for name, shape in shapes.items() if name not in (EMBEDDING, "stem") and len(shape) >= 3]


def paired_spatial_stages(ctx: MethodContext, method: str) -> tuple[list[str], list[str], dict, dict]:
    """The deepest k spatial stages of each model, k = the smaller count, paired shallow to deep."""
    s_shapes, t_shapes = all_shapes(ctx.student, ctx.sample), all_shapes(ctx.teacher, ctx.sample)
    s, t = spatial(s_shapes), spatial(t_shapes)
    for names, model in ((s, ctx.student), (t, ctx.teacher)):
        if not names:
            raise KdrunError(f"loss={method} needs stages with a spatial extent, but {type(model).__name__} declares "
                             f"none (stages: {', '.join(stage_names(model))}); pick a convolutional model or "
                             f"a method on the embedding (rkd, pkt, crd, fitnet)")
    k = min(len(s), len(t))
    return s[-k:], t[-k:], s_shapes, t_shapes


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1)


def conv(nd: int) -> type:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]


def batch_norm(nd: int) -> type:
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]


def adaptive_pool(x: torch.Tensor, size: Any) -> torch.Tensor:
    nd = x.dim() - 2
    size = (size,) * nd if isinstance(size, int) else tuple(size)
    return (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[nd - 1](x, size)


class Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)


def regressor(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Module:
    """A connector from a student feature shape to a teacher's (RepDistiller's ConvReg, any 1-D/2-D size).

    Same spatial rank: conv stride 2 (student twice as large), transposed conv (half as large),
    a (1 + s - t) kernel (larger), or upsampling + 1x1 conv (smaller); then BN and ReLU.
    Flat features on either side: a linear map of the flattened student feature.
    """
    if len(s_shape) != len(t_shape) or len(s_shape) < 3:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(s_shape[1:]), math.prod(t_shape[1:])),
                             Reshape(t_shape[1:]))
    nd, (s_c, *s_size), (t_c, *t_size) = len(s_shape) - 2, s_shape[1:], t_shape[1:]
    Conv = conv(nd)
    if all(s == 2 * t for s, t in zip(s_size, t_size)):
        layer: nn.Module = Conv(s_c, t_c, 3, stride=2, padding=1)
    elif all(2 * s == t for s, t in zip(s_size, t_size)):
        layer = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[nd - 1](s_c, t_c, 4, stride=2, padding=1)
    elif all(s >= t for s, t in zip(s_size, t_size)):
        layer = Conv(s_c, t_c, tuple(1 + s - t for s, t in zip(s_size, t_size)))
    else:
        layer = nn.Sequential(nn.Upsample(size=tuple(t_size)), Conv(s_c, t_c, 1))
    return nn.Sequential(layer, batch_norm(nd)(t_c), nn.ReLU())
