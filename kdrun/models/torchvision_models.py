"""Every torchvision image classifier as `tv_<name>` (`tv_resnet18`, `tv_mobilenet_v3_small`, ...).

Untrained (weights=None, nothing is downloaded), with `num_classes` outputs; extra options go
to torchvision's builder. kdrun/models/__init__.py imports this module only when a `tv_` name
is first asked for, because importing torchvision costs about two seconds per job.

Adapting to the input, since these nets were designed for 224x224 RGB:
- The first convolution takes the input's channel count (1 for MNIST).
- Small inputs (side <= 64: CIFAR, MNIST) keep their resolution through the stem, as CIFAR
  ResNets do: a strided first convolution becomes 3x3 stride 1, and a max-pool right after
  it is dropped. For ResNets that is the usual CIFAR stem; the same rule turns MobileNet,
  EfficientNet, RegNet, ShuffleNet, DenseNet and GoogLeNet stems into stride 1 and ConvNeXt's
  4x4 patchify into a 3x3 conv. VGG's first convolution has stride 1 and stays as it is.
- Transformers keep their patch embedding: ViT and MaxViT are told the input size (their
  position embeddings depend on it); Swin takes any size.
- GoogLeNet and Inception v3 are built without auxiliary heads: they would change the output
  from logits to a tuple in training mode.
A net that cannot take the input (Inception v3 and MaxViT on 32x32, ViT-H/14 whose 14-pixel
patches do not tile 32) is refused here in one line, by a forward pass on one blank image,
rather than failing at the first batch.

`pretrained_torchvision` builds torchvision's own net (ImageNet stem, its classes) with
published weights from the torch hub cache (`$TORCH_HOME/hub/checkpoints`, downloaded once,
hash-checked), read as data only (`weights_only=True`; torchvision's own loader unpickles
fully).

Named stages (kdrun/models/stages.py) are set on the built instance from `STAGES`, a table per
family (ResNets: stem, stage1..4 = layer1..4); every other family names at least its
classifier (its last nn.Linear), so the "embedding" stage works everywhere.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import nn

from kdrun.core.errors import KdrunError, first_line
from kdrun.models.checkpoint import load_payload
from kdrun.models.pretrained import check_pretrained_fits
from kdrun.models.registry import image_channels, register_model
from kdrun.models.stages import name_stages

SMALL_INPUT_SIDE = 64
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
# The argument that gives a transformer its input size, where its position embeddings need one.
SIZE_ARGUMENT = {"vit_": "image_size", "maxvit_": "input_size"}
# Logits only (auxiliary heads would make the training-mode output a tuple), and torchvision's
# own initialisation without its warning that the default will change.
BUILD_OPTIONS = {name: {"aux_logits": False, "init_weights": True} for name in ("googlenet", "inception_v3")}
# What torchvision's builders set when they load published weights.
PRETRAINED_OPTIONS = {"googlenet": {"transform_input": True, "init_weights": False},
                      "inception_v3": {"transform_input": True, "init_weights": False}}



def torchvision_classifier(arch: str, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """torchvision's `arch`, adapted to `input_shape` (channels, height, width) as the module says."""
    channels = image_channels(input_shape)
    options = {**BUILD_OPTIONS.get(arch, {}), **_size_options(arch, input_shape), **kwargs}
    try:
        model = tvm.get_model(arch, weights=None, num_classes=num_classes, **options)
    except (TypeError, ValueError, AssertionError) as error:
        raise KdrunError(f"torchvision cannot build tv_{arch} for inputs {tuple(input_shape)} with options "
                         f"{options} ({first_line(error, None)}); see torchvision.models.{arch}") from None
    small = max(input_shape[1:]) <= SMALL_INPUT_SIDE and not arch.startswith(TRANSFORMERS)
    adapt_stem(model, channels, small)
    _check_shapes(arch, model, input_shape)
    name_stages(arch, model)
    return model


def pretrained_torchvision(arch: str, weights_name: str, num_classes: int, input_shape: tuple[int, ...],
                          kwargs: dict) -> tuple[nn.Module, Path]:
    """torchvision's `arch` as published, with the weights `weights_name` (e.g. IMAGENET1K_V2, DEFAULT)."""
    weights = _weights(arch, weights_name)
    check_pretrained_fits(f"tv_{arch} ({weights})", len(weights.meta["categories"]), num_classes, input_shape)
    path = _cached_file(weights.url)
    options = {**BUILD_OPTIONS.get(arch, {}), **PRETRAINED_OPTIONS.get(arch, {}), **kwargs}
    if arch.startswith("vit_"):
        options["image_size"] = weights.meta["min_size"][0]
    model = tvm.get_model(arch, weights=None, num_classes=num_classes, **options)
    state_dict = {k: v for k, v in load_payload(path).items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
    model.load_state_dict(state_dict)
    name_stages(arch, model)
    return model, path


def _weights(arch: str, name: str) -> "tvm.WeightsEnum":
    try:
        available = tvm.get_model_weights(arch)
    except (KeyError, ValueError):
        raise KdrunError(f"torchvision publishes no weights for tv_{arch}; pick another model or drop teacher.weights") from None
    try:
        return available[name]
    except KeyError:
        raise KdrunError(f"tv_{arch} has no weights '{name}'; choose one of: {', '.join(available.__members__)}") from None


def _cached_file(url: str) -> Path:
    """The weights file in the torch hub cache, downloaded (and hash-checked, like torch.hub) if missing."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = re.search(r"-([a-f0-9]+)\.", path.name)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=digest.group(1) if digest else None,
                                           progress=False)
        except (OSError, RuntimeError) as error:
            raise KdrunError(f"could not download {url} ({str(error).splitlines()[0][:100]}); check the network, "
                             f"or copy the file to {path}") from None
    return path


def _size_options(arch: str, input_shape: tuple[int, ...]) -> dict:
    return {name: input_shape[1] if name == "image_size" else tuple(input_shape[1:])
            for prefix, name in SIZE_ARGUMENT.items() if arch.startswith(prefix)}


def adapt_stem(model: nn.Module, channels: int, small_input: bool) -> None:
    """Give the first convolution `channels` inputs; on small inputs make the stem keep the resolution."""
    conv_name, pool_name = _stem(model)
    conv = model.get_submodule(conv_name)
    keep_resolution = small_input and conv.stride != (1, 1)
    if keep_resolution or conv.in_channels != channels:
        kernel, stride, padding = (3, 1, 1) if keep_resolution else (conv.kernel_size, conv.stride, conv.padding)
        _replace(model, conv_name, nn.Conv2d(channels, conv.out_channels, kernel, stride, padding,
                                             bias=conv.bias is not None))
    if keep_resolution and pool_name:
        _replace(model, pool_name, nn.Identity())


def _stem(model: nn.Module) -> tuple[str, str | None]:
    """Names of the first convolution and of a max-pool that follows it before any other convolution
    (modules are registered in the order they run in every torchvision classifier)."""
    conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if conv is not None:
                break
            conv = name
        elif isinstance(module, nn.MaxPool2d) and conv is not None:
            return conv, name
    return conv, None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _check_shapes(arch: str, model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """One forward pass on a blank image, so that a net too deep for the input fails here, in one line."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    except RuntimeError as error:
        raise KdrunError(f"tv_{arch} cannot take inputs shaped {tuple(input_shape)} ({first_line(error, None)}); "
                         f"pick another model or resize the data") from None
    finally:
        model.train()


for _arch in tvm.list_models(module=tvm):
    register_model(f"tv_{_arch}")(partial(torchvision_classifier, _arch))
