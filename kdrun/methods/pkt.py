"""`pkt`: probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV), on the embeddings:

    K(a, b) = (cos(a, b) + 1) / 2,   P_ij = K(e_i, e_j) / sum_j K(e_i, e_j)   (row-normalised)
    L_pkt = mean_ij P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps)),   eps = 1e-7
    loss = CE + beta * L_pkt   (beta = 30000, RepDistiller)
"""

from __future__ import annotations

import torch

from kdrun.methods._features import FeatureMethod, flat
from kdrun.methods.base import Batch, MethodContext, register_method
from kdrun.methods.params import PKTParams
from kdrun.models.stages import EMBEDDING

EPS = 1e-7


def conditional_probabilities(e: torch.Tensor) -> torch.Tensor:
    e = e / (e.pow(2).sum(1, keepdim=True).sqrt() + EPS)
    e = torch.nan_to_num(e)
    similarity = (e @ e.T + 1) / 2
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    p_s, p_t = conditional_probabilities(e_s), conditional_probabilities(e_t.detach())
    return (p_t * ((p_t + EPS) / (p_s + EPS)).log()).mean()


class PKT(FeatureMethod):
    student_stages = teacher_stages = (EMBEDDING,)

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        return pkt_loss(flat(batch.student_features[EMBEDDING]), flat(batch.teacher_features[EMBEDDING]))


@register_method("pkt", PKTParams)
def build(params: PKTParams, ctx: MethodContext) -> PKT:
    return PKT(params, ctx.T)
