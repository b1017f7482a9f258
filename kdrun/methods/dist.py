"""`dist`: DIST (Huang, You, Wang, Qian, Xu 2022, "Knowledge Distillation from A Stronger Teacher", NeurIPS):
match the *relations* of the predictions rather than the predictions, with Pearson correlation
rho(a, b) = cos(a - mean(a), b - mean(b)), p = softmax(z / T) at the top-level T:

    inter-class: L_inter = 1 - mean over examples i of rho(p_s[i, :], p_t[i, :])
    intra-class: L_intra = 1 - mean over classes c of rho(p_s[:, c], p_t[:, c])
    loss = CE + T^2 * (beta * L_inter + gamma * L_intra)

Defaults: the paper's CIFAR-100 setting as we read it (beta = gamma = 2, with T = 4); the authors'
ImageNet setting is beta = gamma = 1, T = 1. Top-level alpha is unused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.methods.base import Batch, Method, MethodContext, register_method
from kdrun.methods.losses import LossParts, maybe_standardize
from kdrun.methods.params import DISTParams


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation of two (N, K) tensors."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(Method):
    def __init__(self, T: float, beta: float, gamma: float, logit_std: bool) -> None:
        super().__init__()
        self.T, self.beta, self.gamma, self.logit_std = T, beta, gamma, logit_std

    def relations(self, zs: torch.Tensor, zt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ps, pt = F.softmax(zs / self.T, dim=1), F.softmax(zt / self.T, dim=1)
        return 1 - pearson(ps, pt).mean(), 1 - pearson(ps.T, pt.T).mean()

    def forward(self, batch: Batch) -> LossParts:
        ce = F.cross_entropy(batch.logits, batch.labels)
        inter, intra = self.relations(maybe_standardize(batch.logits, self.logit_std),
                                      maybe_standardize(batch.teacher_logits.detach(), self.logit_std))
        kd = self.T**2 * (self.beta * inter + self.gamma * intra)
        return LossParts(ce + kd, ce, kd)


@register_method("dist", DISTParams)
def build(params: DISTParams, ctx: MethodContext) -> DIST:
    return DIST(ctx.T, params.beta, params.gamma, params.logit_std)
