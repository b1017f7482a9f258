"""`rkd`: relational KD (Park, Kim, Lu, Cho 2019, "Relational Knowledge Distillation", CVPR), on the embeddings:

    psi_D(i, j) = ||e_i - e_j|| / mu,  mu = mean of the non-zero distances in the batch
    psi_A(i, j, k) = < (e_i - e_j) / ||e_i - e_j||, (e_k - e_j) / ||e_k - e_j|| >
    L_rkd = w_d * Huber(psi_D^s, psi_D^t) + w_a * Huber(psi_A^s, psi_A^t),   w_d = 25, w_a = 50
    loss = CE + beta * L_rkd   (beta = 1, RepDistiller)

Huber is smooth L1 with delta 1. No trainable parts: distances and angles compare across widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.methods._features import FeatureMethod, flat
from kdrun.methods.base import Batch, MethodContext, register_method
from kdrun.methods.params import RKDParams
from kdrun.models.stages import EMBEDDING


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    square = e.pow(2).sum(1)
    d = (square.unsqueeze(1) + square.unsqueeze(0) - 2 * e @ e.T).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def normalized_distances(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(e)
    return d / d[d > 0].mean()


def angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(e_s: torch.Tensor, e_t: torch.Tensor, distance_weight: float, angle_weight: float) -> torch.Tensor:
    with torch.no_grad():
        d_t, a_t = normalized_distances(e_t), angles(e_t)
    return (distance_weight * F.smooth_l1_loss(normalized_distances(e_s), d_t)
            + angle_weight * F.smooth_l1_loss(angles(e_s), a_t))


class RKD(FeatureMethod):
    student_stages = teacher_stages = (EMBEDDING,)

    def __init__(self, params: RKDParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx.T)
        self.distance_weight, self.angle_weight = params.distance_weight, params.angle_weight

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        return rkd_loss(flat(batch.student_features[EMBEDDING]), flat(batch.teacher_features[EMBEDDING]),
                        self.distance_weight, self.angle_weight)


@register_method("rkd", RKDParams)
def build(params: RKDParams, ctx: MethodContext) -> RKD:
    return RKD(params, ctx)
