"""`deit`: DeiT's distillation token (Touvron, Cord, Douze, Massa, Sablayrolles, Jegou 2021, "Training
data-efficient image transformers & distillation through attention", ICML), as in the authors' `losses.py`:

    a ViT student with a class token and a distillation token, each with its own head (z_cls, z_dist):
        hard: L = (1 - a) * CE(z_cls, y) + a * CE(z_dist, argmax z_t)
        soft: L = (1 - a) * CE(z_cls, y) + a * T^2 * KL(softmax(z_t/T) || softmax(z_dist/T)) / K
    a = loss.kd_weight (DeiT's alpha, 0.5); T the top-level T. The soft term is DeiT's: KL summed over the
    batch and classes, divided by batch * K (not batchmean: K times smaller than kd's term).
    At test time the student predicts with (z_cls + z_dist) / 2 (timm's forward does).

The student must carry the token: timm's deit_*_distilled_* models (kdrun.core.families).
"""

from __future__ import annotations

import torch.nn.functional as F

from kdrun.core.errors import KdrunError
from kdrun.methods.base import Batch, Method, MethodContext, register_method
from kdrun.methods.losses import LossParts
from kdrun.methods.params import DeiTParams


class DeiT(Method):
    student_stages = ("cls_logits", "dist_logits")

    def __init__(self, params: DeiTParams, T: float) -> None:
        super().__init__()
        self.hard, self.kd_weight, self.T = params.variant == "hard", params.kd_weight, T

    def forward(self, batch: Batch) -> LossParts:
        z_cls, z_dist = batch.student_features["cls_logits"], batch.student_features["dist_logits"]
        z_t = batch.teacher_logits.detach()
        ce = F.cross_entropy(z_cls, batch.labels)
        if self.hard:
            kd = F.cross_entropy(z_dist, z_t.argmax(1))
        else:
            T = self.T
            kd = F.kl_div(F.log_softmax(z_dist / T, 1), F.log_softmax(z_t / T, 1), reduction="sum",
                          log_target=True) * T * T / z_dist.numel()
        return LossParts((1 - self.kd_weight) * ce + self.kd_weight * kd, ce, self.kd_weight * kd)


@register_method("deit", DeiTParams)
def build(params: DeiTParams, ctx: MethodContext) -> DeiT:
    if "dist_logits" not in getattr(ctx.student, "extra_taps", {}):
        raise KdrunError(f"loss=deit needs a ViT student with a distillation token, not a {type(ctx.student).__name__}; "
                         "e.g. student=timm student.name=timm_deit_tiny_distilled_patch16_224")
    return DeiT(params, ctx.T)
