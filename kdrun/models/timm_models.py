"""Every timm model as `timm_<name>` (`timm_resnet50`, `timm_convnext_tiny`, ...): the optional extra `kdrun[timm]`.

Untrained by default, with `num_classes` outputs and the input's channel count (timm's
`in_chans`); options go to `timm.create_model`. `pretrained_timm` loads timm's published
weights through timm's own loader (`teacher.weights=pretrained`: from the Hugging Face hub
cache, downloaded once, safetensors or `weights_only`), or from a local file
(`teacher.weights=/path/to/model.safetensors`, timm's `pretrained_cfg_overlay=dict(file=...)`),
which works offline. Imported only when a `timm_` name is asked for.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.models.pretrained import check_pretrained_fits
from kdrun.models.registry import image_channels, register_model
from kdrun.models.stages import name_stages

try:
    import timm
except ImportError:
    raise KdrunError("timm_<name> models need timm: pip install 'kdrun[timm]'") from None


def timm_classifier(arch: str, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """timm's `arch`, untrained, for `num_classes` classes and the input's channels; built for the input's
    side (`img_size`) where the architecture has one (ViT, DeiT, Swin: their position tables and windows
    depend on it), unless `kwargs` set it."""
    channels = image_channels(input_shape)
    sized = {"img_size": tuple(input_shape[1:]), **kwargs}
    try:
        model = timm.create_model(arch, num_classes=num_classes, in_chans=channels, **sized)
    except TypeError as error:
        if "img_size" not in str(error) or "img_size" in kwargs:
            raise
        model = timm.create_model(arch, num_classes=num_classes, in_chans=channels, **kwargs)  # no fixed size
    name_stages(arch, model)
    return model


def pretrained_timm(arch: str, weights: str, num_classes: int, input_shape: tuple[int, ...],
                    kwargs: dict) -> tuple[nn.Module, Optional[Path]]:
    """timm's `arch` with its published weights (`pretrained`) or those of a local file, and that file."""
    overlay, path = {}, None
    if weights != "pretrained":
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise KdrunError(f"teacher.weights={weights}: no such file; give 'pretrained' (timm's published weights) "
                             "or the path of a weights file")
        overlay = {"file": str(path)}
    try:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, OSError, ValueError) as error:
        raise KdrunError(f"timm could not load weights for timm_{arch} ({str(error).strip().splitlines()[0][:120]}); "
                         "check the name, the network, or pass teacher.weights=PATH to a weights file") from None
    check_pretrained_fits(f"timm_{arch}", model.num_classes, num_classes, input_shape)
    name_stages(arch, model)
    return model, path or _hub_file(model)


def _hub_file(model: nn.Module) -> Optional[Path]:
    """Where timm's download sits in the Hugging Face cache, if it came from there."""
    hub_id = getattr(model, "pretrained_cfg", {}).get("hf_hub_id")
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "model.safetensors")
    return Path(found) if isinstance(found, str) else None


for _arch in timm.list_models():
    register_model(f"timm_{_arch}")(partial(timm_classifier, _arch))
