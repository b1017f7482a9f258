"""Which architecture family a model name belongs to, read from the name alone (no torch, no timm: the
CLI's pre-check uses it before any run).

Families matter where features are compared: a CNN's stages are a pyramid of (C, H, W) maps; a ViT's
blocks are token sequences on one fixed grid; a hierarchical transformer (Swin) has a pyramid of token
maps. Logits mean the same in every family; raw features do not (OFA-KD, Hao et al. 2023).
"""

from __future__ import annotations

from typing import Optional

CNN, VIT, HIERARCHICAL = "cnn", "vit", "hierarchical transformer"

# timm/torchvision architecture prefixes (after `timm_` / `tv_`) of the transformer families.
_VIT_PREFIXES = ("vit", "deit", "beit", "eva", "cait", "xcit", "flexivit")
_HIERARCHICAL_PREFIXES = ("swin", "maxvit", "pvt", "twins", "mvit")


def family_of(model_name: str) -> Optional[str]:
    """The family of a registry name (`resnet8`, `timm_vit_tiny_patch16_224`, `tv_swin_t`, ...); None for a
    `custom` model, whose architecture only its code knows."""
    if model_name == "custom":
        return None
    arch = model_name.split("_", 1)[1] if model_name.startswith(("timm_", "tv_")) else model_name
    if arch.startswith(_VIT_PREFIXES):
        return VIT
    if arch.startswith(_HIERARCHICAL_PREFIXES):
        return HIERARCHICAL
    return CNN


def has_distillation_token(model_name: str) -> bool:
    """A DeiT with a distillation token and its own head for it (timm's `deit_*_distilled_*`)."""
    return model_name.startswith("timm_deit") and "_distilled" in model_name
