"""Named stage outputs of a model, for feature-based distillation (FitNets, AT, RKD, CRD, ...).

One documented way for every model: a model names its stages in an attribute
`stage_modules`, an ordered dict {stage name: dotted submodule path}, shallow to deep
(e.g. {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3"}), and its classifier in
`classifier_module` (the final nn.Linear). `tap(model, names)` registers forward hooks and
collects those outputs during an ordinary forward pass; the name "embedding" is always
available: the input of the classifier (the pooled, flattened pre-logit features).
Forward hooks, not `create_feature_extractor`: they need no symbolic trace, so they work on
every model (ShuffleNet's chunk, torchvision's transformers) and leave the module itself
unchanged, so DDP, torch.compile and state_dicts see the plain model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from kdrun.core.errors import KdrunError

EMBEDDING = "embedding"
# Stage modules per family (arch prefix), shallow to deep; families not listed name only their classifier.
RESNET_STAGES = {"stem": "maxpool", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4"}
STAGES = {"resnet": RESNET_STAGES, "resnext": RESNET_STAGES, "wide_resnet": RESNET_STAGES}


def name_stages(arch: str, model: nn.Module) -> None:
    """Set `stage_modules` (from `STAGES`) and `classifier_module` (the last nn.Linear) on the instance."""
    model.stage_modules = next((stages for prefix, stages in STAGES.items() if arch.startswith(prefix)), {})
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if linears:
        model.classifier_module = linears[-1]



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


@contextmanager
def tap(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward pass of `model` fills the yielded dict with the named stage outputs."""
    stages = getattr(model, "stage_modules", {})
    unknown = [n for n in names if n != EMBEDDING and n not in stages]
    if unknown:
        raise KdrunError(f"{type(model).__name__} has no stage {', '.join(unknown)}; its stages: "
                         f"{', '.join(stage_names(model))}")
    features: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        if name == EMBEDDING:
            handles.append(classifier(model).register_forward_pre_hook(
                lambda _module, args, key=name: features.__setitem__(key, args[0])))
        else:
            handles.append(model.get_submodule(stages[name]).register_forward_hook(
                lambda _module, _args, output, key=name: features.__setitem__(key, output)))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
