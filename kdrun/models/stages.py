"""Named stage outputs of a model, for feature-based distillation (FitNets, AT, RKD, CRD, ...).

One documented way for every model: a model names its stages in an attribute
`stage_modules`, an ordered dict {stage name: dotted submodule path}, shallow to deep
(e.g. {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3"}), and its classifier in
`classifier_module` (the final nn.Linear). `tap(model, names)` registers forward hooks and
collects those outputs during an ordinary forward pass; the name "embedding" is always
available: the input of the classifier (the pooled, flattened pre-logit features).
timm models name their stages from timm's own `feature_info` (ConvNeXt's `stages.i`, Swin's
`layers.i`, up to four evenly spaced ViT `blocks.i`), with a reader (`stage_readers`) where the
output is not an (N, C, H, W) map: a ViT's tokens become a map on the patch grid (the prefix
tokens dropped), Swin's NHWC maps are permuted. `extra_taps` are taps outside the stage pyramid:
a ViT's final CLS token (`cls`), a distilled DeiT's two heads (`cls_logits`, `dist_logits`).
Forward hooks, not `create_feature_extractor`: they need no symbolic trace, so they work on
every model (ShuffleNet's chunk, torchvision's transformers) and leave the module itself
unchanged, so DDP, torch.compile and state_dicts see the plain model.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator

import torch
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.core.families import CNN, family_of

EMBEDDING = "embedding"
# Stage modules per family (arch prefix), shallow to deep; families not listed name only their classifier.
RESNET_STAGES = {"stem": "maxpool", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4"}
STAGES = {"resnet": RESNET_STAGES, "resnext": RESNET_STAGES, "wide_resnet": RESNET_STAGES}


def name_stages(arch: str, model: nn.Module) -> None:
    """Set `stage_modules` (from `STAGES`, else timm's `feature_info`), their readers, the extra taps and
    `classifier_module` (a distilled DeiT's class head, else the last nn.Linear) on the instance."""
    known = next((stages for prefix, stages in STAGES.items() if arch.startswith(prefix)), None)
    model.stage_modules, model.stage_readers = (known, {}) if known is not None else feature_info_stages(model)
    model.extra_taps, model.tap_readers = token_taps(model)
    model.family = family_of(arch) or CNN
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if hasattr(model, "head_dist"):
        model.classifier_module = "head"
    elif linears:
        model.classifier_module = linears[-1]


def is_token_model(model: nn.Module) -> bool:
    """A ViT-like model: patch tokens (plus CLS/distillation/register prefix tokens) on one grid."""
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks")


def feature_info_stages(model: nn.Module) -> tuple[dict[str, str], dict[str, Callable]]:
    """Stages from timm's `feature_info` (module paths, shallow to deep): a stride-2 entry is the stem; a ViT's
    blocks, all at one stride, give at most four evenly spaced stages. Readers turn outputs into maps."""
    info = [(entry["module"], entry.get("reduction", 0)) for entry in getattr(model, "feature_info", None) or []]
    tokens = is_token_model(model)
    stages = {"stem": info.pop(0)[0]} if info and info[0][1] <= 2 and not tokens else {}
    if tokens and len(info) > 4:
        info = [info[round((k + 1) * len(info) / 4) - 1] for k in range(4)]
    stages.update({f"stage{i}": path for i, (path, _) in enumerate(info, 1)})
    if tokens:
        grid = tuple(getattr(model.patch_embed, "grid_size", ()) or ())
        reader: Callable = partial(token_map, prefix=model.num_prefix_tokens, grid=grid)
    elif getattr(model, "output_fmt", "NCHW") == "NHWC":
        reader = channels_first
    else:
        return stages, {}
    return stages, {name: reader for name in stages}


def token_taps(model: nn.Module) -> tuple[dict[str, str], dict[str, Callable]]:
    """A ViT's final CLS token (the `norm` output's first token); a distilled DeiT's class and distillation heads."""
    if not is_token_model(model) or model.num_prefix_tokens == 0:
        return {}, {}
    taps, readers = {"cls": "norm"}, {"cls": cls_token}
    if hasattr(model, "head_dist"):
        taps.update(cls_logits="head", dist_logits="head_dist")
    return taps, readers


def token_map(tokens: torch.Tensor, prefix: int, grid: tuple[int, ...]) -> torch.Tensor:
    """(N, prefix + h*w, C) tokens -> (N, C, h, w) map; the grid is the patch grid, else the square one."""
    patches = tokens[:, prefix:]
    n, length, channels = patches.shape
    h, w = grid if len(grid) == 2 and grid[0] * grid[1] == length else (math.isqrt(length), length // math.isqrt(length))
    return patches.transpose(1, 2).reshape(n, channels, h, w)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N, C, H, W)."""
    return x.permute(0, 3, 1, 2)


def cls_token(tokens: torch.Tensor) -> torch.Tensor:
    return tokens[:, 0]



def family(model: nn.Module) -> str:
    """The model's architecture family (kdrun.core.families); kdrun's own zoo and custom models count as CNNs."""
    return getattr(model, "family", CNN)


def stage_names(model: nn.Module) -> list[str]:
    """The model's stage names, shallow to deep, then "embedding"."""
    return [*getattr(model, "stage_modules", {}), EMBEDDING]


def classifier(model: nn.Module) -> nn.Module:
    """The final linear layer: named by `classifier_module`, else the last nn.Linear."""
    path = getattr(model, "classifier_module", None)
    if path is not None:
        return model.get_submodule(path)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise KdrunError(f"{type(model).__name__} has no nn.Linear classifier; set its classifier_module")
    return linears[-1]


def _same(x: Any) -> Any:
    return x


@contextmanager
def tap(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward pass of `model` fills the yielded dict with the named stage outputs."""
    stages = {**getattr(model, "stage_modules", {}), **getattr(model, "extra_taps", {})}
    readers = {**getattr(model, "stage_readers", {}), **getattr(model, "tap_readers", {})}
    unknown = [n for n in names if n != EMBEDDING and n not in stages]
    if unknown:
        raise KdrunError(f"{type(model).__name__} has no stage {', '.join(unknown)}; its stages: "
                         f"{', '.join(stage_names(model) + list(getattr(model, 'extra_taps', {})))}")
    features: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        if name == EMBEDDING:
            handles.append(classifier(model).register_forward_pre_hook(
                lambda _module, args, key=name: features.__setitem__(key, args[0])))
        else:
            handles.append(model.get_submodule(stages[name]).register_forward_hook(
                lambda _module, _args, output, key=name, read=readers.get(name, _same): features.__setitem__(
                    key, read(output))))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
