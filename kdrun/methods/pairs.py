"""Which methods a teacher/student pair can use, decided from the model names before any run (no torch).

Logit methods compare predictions, which mean the same in every family: any pair. Embedding methods (rkd,
pkt, crd) compare pooled vectors: any pair. fitnet meets across families in a shared, channel-normalised
space and ofa projects student stages into logit space (OFA-KD): any pair. at and reviewkd compare raw stage
pyramids (attention maps of activations, fused stage outputs) that only a pair of one family shares: OFA-KD
(Hao et al. 2023) measured such feature methods falling below plain training across families.
deit needs a student with a distillation token.
"""

from __future__ import annotations

from typing import Optional

from kdrun.core.errors import ConfigError
from kdrun.core.families import family_of, has_distillation_token
from kdrun.methods.params import PARAMS

SAME_FAMILY_ONLY = {
    "at": "attention maps of raw activations",
    "reviewkd": "fused raw stage pyramids",
}


def refusal(method: str, teacher: str, student: str) -> Optional[str]:
    """Why `method` cannot distil `teacher` into `student`, in a few words; None if it can."""
    if method == "deit" and not has_distillation_token(student):
        return "needs a ViT student with a distillation token (timm_deit_*_distilled_*)"
    t_family, s_family = family_of(teacher), family_of(student)
    if method in SAME_FAMILY_ONLY and None not in (t_family, s_family) and t_family != s_family:
        return f"compares {SAME_FAMILY_ONLY[method]}, which differ across families"
    return None


def methods_for(teacher: str, student: str) -> list[str]:
    return [name for name in sorted(PARAMS) if refusal(name, teacher, student) is None]


def check_pair(method: str, teacher: str, student: str) -> None:
    """One line naming the pair and the methods that work for it, if `method` cannot."""
    why = refusal(method, teacher, student)
    if why is not None:
        raise ConfigError(f"loss={method} cannot distil teacher {teacher} ({family_of(teacher) or 'custom'}) into "
                          f"student {student} ({family_of(student) or 'custom'}): it {why}; this pair can use loss="
                          + ", ".join(methods_for(teacher, student)))
