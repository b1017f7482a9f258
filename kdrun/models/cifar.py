"""The CIFAR model zoo of the distillation literature (RepDistiller / CRD, mdistiller / DKD).

Module names, shapes and initialisation follow those repositories' definitions, so their
published checkpoints (`cifar_teachers.tar`: `resnet32x4_vanilla/ckpt_epoch_240.pth`, ...)
load with `load_state_dict(strict=True)` and give the same logits: ResNets of He et al. 2016
(section 4.2) with RepDistiller's widths (`conv1, bn1, layer1..3, fc`), wide ResNets
(Zagoruyko & Komodakis 2016; `conv1, block1..3, bn1, fc`), VGG with batch norm
(`block0..4, classifier`); the mobile families (MobileNetV2, ShuffleNet V1/V2) are in
kdrun/models/cifar_mobile.py and share the helpers here. Each family is one parameterised class; the depths and
widths are registered as names. The networks work on any (channels, height, width) input
(global average pooling instead of the peers' fixed 8x8/4x4/2x2 pools, identical at 32x32);
the strides assume about 32x32.

Every model names its stages for feature-based distillation (kdrun/models/stages.py):
"stem", "stage1".."stage3" (VGG and MobileNetV2 also "stage4"), at the points where the
peers' `is_feat=True` forward returns its features f0..f4, then "embedding".
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models.registry import image_channels, register_model


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, 0, groups=groups, bias=False)


def init_like_peers(model: nn.Module, linear_std: float | None = None) -> nn.Module:
    """He-normal convolutions (fan-out) with zero biases, as the peers' ResNet, WRN, VGG and
    MobileNetV2 do; with `linear_std`, the classifier N(0, std) with a zero bias (VGG, MobileNetV2).
    Batch norm starts at weight 1, bias 0, PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0, linear_std)
            nn.init.zeros_(module.bias)
    return model


def register_variants(builder: Callable[..., nn.Module], variants: dict[str, tuple]) -> None:
    """Register `builder` once per name, its leading arguments fixed (they do not become user options)."""
    for name, args in variants.items():
        register_model(name)(partial(builder, *args))


def pooled_logits(features: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
    """Global average pooling, flattening, and the classifier (whose input is the "embedding")."""
    return classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


# --- ResNet (RepDistiller resnet.py): 3 stages of (depth - 2) / 6 basic blocks ----------------


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn, plus the input (a strided 1x1 conv-bn `downsample` where the shape changes), relu."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """Stem of widths[0] channels, then `layer1..3` of widths[1:] at strides 1, 2, 2, and `fc`."""

    stage_modules = {"stem": "relu", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3"}
    classifier_module = "fc"

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1, self.bn1 = conv3x3(image_channels(input_shape), widths[0]), nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer(widths[0], widths[1], blocks, 1)
        self.layer2 = self._layer(widths[1], widths[2], blocks, 2)
        self.layer3 = self._layer(widths[2], widths[3], blocks, 2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_like_peers(self)

    @staticmethod
    def _layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*(BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return pooled_logits(x, self.fc)


register_variants(CifarResNet, {f"resnet{depth}": (depth, (16, 16, 32, 64)) for depth in (8, 14, 20, 32, 44, 56, 110)})
register_variants(CifarResNet, {f"resnet{depth}x4": (depth, (32, 64, 128, 256)) for depth in (8, 32)})


# --- ResNet-50 for CIFAR (RepDistiller resnetv2.py): ImageNet's 4 bottleneck stages, a 3x3 stride-1 stem ---------


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus the input (a 1x1 conv-bn `shortcut` where the shape changes)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = conv1x1(cin, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv1x1(planes, cout), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Sequential())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNetV2(nn.Module):
    """CRD's cross-family teacher ResNet50 (79.34% on CIFAR-100): a 64-channel 3x3 stem, `layer1..4` of
    bottlenecks at 64/128/256/512 planes and strides 1, 2, 2, 2, and `linear`."""

    stage_modules = {"stem": "relu", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4"}
    classifier_module = "linear"

    def __init__(self, blocks: Sequence[int], num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(image_channels(input_shape), 64), nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        cin, layers = 64, []
        for planes, count, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            layers.append(nn.Sequential(*(Bottleneck(cin if i == 0 else planes * Bottleneck.expansion, planes,
                                                     stride if i == 0 else 1) for i in range(count))))
            cin = planes * Bottleneck.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(cin, num_classes)
        init_like_peers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))))
        return pooled_logits(x, self.linear)


register_variants(CifarResNetV2, {"resnet50": ((3, 4, 6, 3),)})


# --- Wide ResNet (Zagoruyko & Komodakis 2016): pre-activation blocks, widths x k --------------


class WideBlock(nn.Module):
    """Pre-activation block; where the shape changes, the 1x1 `convShortcut` sees the activated input too."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout)
        self.convShortcut = conv1x1(cin, cout, stride) if cin != cout else None  # noqa: N815 - the peers' name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return out + (x if self.convShortcut is None else self.convShortcut(activated))


class WideStage(nn.Module):
    """The peers' `NetworkBlock`: the blocks of one stage under `layer`."""

    def __init__(self, cin: int, cout: int, blocks: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen: a 16-channel stem, then 3 stages of (depth - 4) / 6 blocks at 16k, 32k, 64k channels."""

    stage_modules = {"stem": "conv1", "stage1": "block1", "stage2": "block2", "stage3": "block3"}
    classifier_module = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv3x3(image_channels(input_shape), widths[0])
        self.block1 = WideStage(widths[0], widths[1], blocks, 1)
        self.block2 = WideStage(widths[1], widths[2], blocks, 2)
        self.block3 = WideStage(widths[2], widths[3], blocks, 2)
        self.bn1, self.relu = nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        init_like_peers(self)
        nn.init.zeros_(self.fc.bias)  # the peers zero the bias and keep PyTorch's default weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return pooled_logits(self.relu(self.bn1(x)), self.fc)


register_variants(WideResNet, {f"wrn_{depth}_{widen}": (depth, widen) for depth in (16, 40) for widen in (1, 2)})


# --- VGG with batch norm (RepDistiller vgg.py): 5 blocks of 3x3 convs, a linear classifier ----

VGG_BLOCKS = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
VGG_WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """`block0..4` of 64, 128, 256, 512, 512 channels; max-pooling after the first three (and the
    fourth from 64x64 inputs up, as RepDistiller does for Tiny-ImageNet), global pooling after the
    last. Each block is conv(bias)-bn-relu repeated; the peers drop the block's last ReLU and apply
    it in `forward`, which gives the same keys and outputs (a ReLU has no parameters)."""

    stage_modules = {"stem": "block0", "stage1": "block1", "stage2": "block2", "stage3": "block3", "stage4": "block4"}
    classifier_module = "classifier"

    def __init__(self, convs_per_block: Sequence[int], num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        cin = image_channels(input_shape)
        for index, (width, convs) in enumerate(zip(VGG_WIDTHS, convs_per_block)):
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers += [conv3x3(cin, width, bias=True), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                cin = width
            setattr(self, f"block{index}", nn.Sequential(*layers))
        self.pooled_blocks = 4 if min(input_shape[1:]) >= 64 else 3
        self.classifier = nn.Linear(VGG_WIDTHS[-1], num_classes)
        init_like_peers(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(5):
            x = getattr(self, f"block{index}")(x)
            x = F.max_pool2d(x, 2) if index < self.pooled_blocks else x
        return pooled_logits(x, self.classifier)


register_variants(VGG, {name: (blocks,) for name, blocks in VGG_BLOCKS.items()})
