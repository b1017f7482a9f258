"""`crd`: contrastive representation distillation (Tian, Krishnan, Isola 2020, ICLR), as in RepDistiller:

    g_s(e) = normalize(W_s e),  g_t(e) = normalize(W_t e)       (trained embeddings, dim 128)
    memory banks M_s, M_t: one unit vector per training example (buffers, saved with the run)
    for example i with K negatives j_1..j_K (other classes' examples, drawn uniformly, "exact" mode; distinct
    unless K exceeds that pool, as RepDistiller draws them):
        h_t(i, j) = exp(<M_s[j], g_t(e_t,i)> / tau) / Z_t,   h_s(i, j) = exp(<M_t[j], g_s(e_s,i)> / tau) / Z_s
        (Z: the mean of exp(.) times N on the first batch, then fixed)
    NCE with noise P_n = 1/N, m = K:
        L(h) = -[ log(h_pos / (h_pos + m P_n)) + sum_j log(m P_n / (h_j + m P_n)) ] averaged over the batch
    L_crd = L(h_s) + L(h_t);   loss = CE + beta * L_crd   (beta = 0.8)
    after the step: M_s[i] <- normalize(momentum * M_s[i] + (1 - momentum) g_s(e_s,i)), likewise M_t

Defaults are the paper's: K = 16384 (capped at the training-set size), dim 128, tau = 0.07,
momentum 0.5. Needs each example's index in the training set (the engine passes it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.methods._features import FeatureMethod, flat, stage_shapes
from kdrun.methods.base import Batch, MethodContext, register_method
from kdrun.methods.params import CRDParams
from kdrun.models.stages import EMBEDDING

EPS = 1e-7


class Embed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(flat(x)), dim=1)


def nce_loss(h: torch.Tensor, num_data: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss: column 0 positive, the rest negatives."""
    m_pn = (h.shape[1] - 1) / num_data
    log_pos = torch.log(h[:, 0] / (h[:, 0] + m_pn + EPS))
    log_neg = torch.log(m_pn / (h[:, 1:] + m_pn + EPS))
    return -(log_pos.sum() + log_neg.sum()) / len(h)


class NegativeSampler(nn.Module):
    """K indices per example from the training examples of other classes, as RepDistiller's
    `CIFAR100InstanceSample.__getitem__` draws them (dataset/cifar100.py, "exact" mode): without replacement
    (K distinct negatives) when K fits in that pool, with replacement only when it does not.

    Sorting the dataset by label puts each class in one block. Distinct draws: the first K positions of a
    random permutation that puts the anchor's own block last. With replacement: a draw r in [0, N - n_c)
    skips class c's block. Uses the global torch generator of the labels' device, which last.pt captures.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=num_classes)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("count", counts, persistent=False)
        pools = [len(labels) - n for n in counts.tolist() if n > 0]  # host-side, so no step syncs to decide
        self.smallest_pool, self.largest_pool = min(pools), max(pools)

    def forward(self, labels: torch.Tensor, k: int) -> torch.Tensor:
        if k <= self.smallest_pool:
            return self.distinct(labels, k)
        if k > self.largest_pool:
            return self.with_replacement(labels, k)
        fits = (len(self.order) - self.count[labels] >= k).unsqueeze(1)
        return torch.where(fits, self.distinct(labels, k), self.with_replacement(labels, k))

    def distinct(self, labels: torch.Tensor, k: int) -> torch.Tensor:
        """K distinct examples of other classes per anchor (needs K <= N - n_c)."""
        position = torch.arange(len(self.order), device=labels.device)
        start, count = self.start[labels].unsqueeze(1), self.count[labels].unsqueeze(1)
        own = (position >= start) & (position < start + count)
        keys = torch.rand(len(labels), len(self.order), device=labels.device).masked_fill_(own, 2.0)
        return self.order[keys.argsort(dim=1)[:, :k]]

    def with_replacement(self, labels: torch.Tensor, k: int) -> torch.Tensor:
        others = (len(self.order) - self.count[labels]).unsqueeze(1)
        r = (torch.rand(len(labels), k, device=labels.device) * others).long().clamp_max(others - 1)
        start, count = self.start[labels].unsqueeze(1), self.count[labels].unsqueeze(1)
        return self.order[r + (r >= start) * count]


class CRD(FeatureMethod):
    student_stages = teacher_stages = (EMBEDDING,)

    def __init__(self, params: CRDParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx.T)
        if ctx.train_labels is None:
            raise KdrunError("loss=crd keeps a memory bank over the training set, indexed by sample: it needs an "
                             "in-memory dataset, not a streamed one")
        s_dim = math.prod(stage_shapes(ctx.student, [EMBEDDING], ctx.sample)[EMBEDDING][1:])
        t_dim = math.prod(stage_shapes(ctx.teacher, [EMBEDDING], ctx.sample)[EMBEDDING][1:])
        self.embed_s, self.embed_t = Embed(s_dim, params.feat_dim), Embed(t_dim, params.feat_dim)
        self.num_data, self.nce_t, self.momentum = ctx.num_train, params.nce_t, params.momentum
        self.k = min(params.negatives, ctx.num_train - 1)
        self.sampler = NegativeSampler(ctx.train_labels, ctx.num_classes)
        stdv = 1.0 / math.sqrt(params.feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(ctx.num_train, params.feat_dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(ctx.num_train, params.feat_dim) * 2 * stdv - stdv)
        self.register_buffer("z", torch.full((2,), -1.0))  # Z_s, Z_t; set from the first batch
        self.z_ready = False

    def scores(self, g_s: torch.Tensor, g_t: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_s, h_t), each (B, K + 1): student embedding vs teacher memory, teacher embedding vs student memory."""
        e_s = torch.exp(torch.bmm(self.memory_t[idx].detach(), g_s.unsqueeze(2)).squeeze(2) / self.nce_t)
        e_t = torch.exp(torch.bmm(self.memory_s[idx].detach(), g_t.unsqueeze(2)).squeeze(2) / self.nce_t)
        if not self.z_ready:  # one host sync per process, not per step
            if self.z[0] < 0:
                self.z.copy_(torch.stack([e_s.mean(), e_t.mean()]).detach() * self.num_data)
            self.z_ready = True
        return e_s / self.z[0], e_t / self.z[1]

    @torch.no_grad()
    def update_memory(self, index: torch.Tensor, g_s: torch.Tensor, g_t: torch.Tensor) -> None:
        for memory, g in ((self.memory_s, g_s), (self.memory_t, g_t)):
            memory.index_copy_(0, index, F.normalize(memory[index] * self.momentum + g.detach() * (1 - self.momentum), dim=1))

    def contrast(self, e_s: torch.Tensor, e_t: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        g_s, g_t = self.embed_s(e_s), self.embed_t(e_t)
        idx = torch.cat([index.unsqueeze(1), self.sampler(labels, self.k)], dim=1)
        h_s, h_t = self.scores(g_s, g_t, idx)
        self.update_memory(index, g_s, g_t)
        return nce_loss(h_s, self.num_data) + nce_loss(h_t, self.num_data)

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        return self.contrast(batch.student_features[EMBEDDING], batch.teacher_features[EMBEDDING].detach(),
                             batch.index, batch.labels)

    def summary(self) -> dict:
        return {"negatives": self.k}


@register_method("crd", CRDParams)
def build(params: CRDParams, ctx: MethodContext) -> CRD:
    return CRD(params, ctx)
