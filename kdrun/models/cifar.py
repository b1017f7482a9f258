"""The CIFAR model zoo of the distillation literature (RepDistiller / CRD, mdistiller / DKD).

Module names, shapes and initialisation follow those repositories' definitions, so their
published checkpoints (`cifar_teachers.tar`: `resnet32x4_vanilla/ckpt_epoch_240.pth`, ...)
load with `load_state_dict(strict=True)` and give the same logits: ResNets of He et al. 2016
(section 4.2) with RepDistiller's widths (`conv1, bn1, layer1..3, fc`), wide ResNets
(Zagoruyko & Komodakis 2016; `conv1, block1..3, bn1, fc`), VGG with batch norm
(`block0..4, classifier`), MobileNetV2 at half width (RepDistiller's `mobile_half`:
`conv1, blocks, conv2, classifier`) and ShuffleNet V1/V2 as adapted to 32x32 inputs
(`conv1, bn1, layer1..3, linear`). Each family is one parameterised class; the depths and
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

from kdrun.models import image_channels, register_model


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


# --- MobileNetV2 (Sandler et al. 2018), RepDistiller's `mobile_half` for CIFAR ----------------

# (expansion, channels at width 1, blocks, first stride) per stage; RepDistiller's T = 6.
MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection (the peers' `conv`); residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv1x1(cin, hidden), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            conv3x3(hidden, hidden, stride, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            conv1x1(hidden, cout), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


@register_model("mobilenetv2")
class MobileNetV2(nn.Module):
    """Width 0.5 with a full 1280-channel last conv; a stride-2 stem, so 32x32 ends at 2x2."""

    stage_modules = {"stem": "conv1", "stage1": "blocks.1", "stage2": "blocks.2", "stage3": "blocks.4",
                     "stage4": "blocks.6"}
    classifier_module = "classifier.0"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        width = 0.5
        cin = int(32 * width)
        self.conv1 = conv_bn_relu(image_channels(input_shape), cin, 3, 2)
        self.blocks = nn.ModuleList()
        for expansion, channels, blocks, stride in MOBILENET_STAGES:
            cout = int(channels * width)
            self.blocks.append(nn.Sequential(*(InvertedResidual(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                                expansion) for i in range(blocks))))
            cin = cout
        self.conv2 = conv_bn_relu(cin, 1280, 1)
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
        init_like_peers(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return pooled_logits(self.conv2(x), self.classifier)


# --- ShuffleNet V1 (Zhang et al. 2018), groups 3, as adapted to CIFAR --------------------------


class ChannelShuffle(nn.Module):
    """Interleave the channels of `groups` groups so grouped convolutions exchange information."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a downsampling unit concatenates an
    average-pooled input, so its branch makes only `cout - cin` channels. The first unit, on
    the 24-channel stem, has too few channels to group its first 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        branch = cout - cin if stride == 2 else cout
        mid, first_groups = branch // 4, 1 if cin == 24 else groups
        self.stride = stride
        self.conv1, self.bn1 = conv1x1(cin, mid, groups=first_groups), nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2, self.bn2 = conv3x3(mid, mid, stride, groups=mid), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = conv1x1(mid, branch, groups=groups), nn.BatchNorm2d(branch)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        shortcut = self.shortcut(x)
        return F.relu(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


@register_model("shufflenetv1")
class ShuffleNetV1(nn.Module):
    """A 1x1 stem, then `layer1..3` of 4, 8, 4 units at 240, 480, 960 channels (groups 3), `linear`."""

    stage_modules = {"stem": "relu", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3"}
    classifier_module = "linear"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        cin, groups = 24, 3
        self.conv1, self.bn1 = conv1x1(image_channels(input_shape), cin), nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        for index, (width, units) in enumerate(((240, 4), (480, 8), (960, 4)), start=1):
            setattr(self, f"layer{index}", nn.Sequential(*(ShuffleV1Unit(cin if i == 0 else width, width,
                                                                         2 if i == 0 else 1, groups)
                                                           for i in range(units))))
            cin = width
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return pooled_logits(x, self.linear)


# --- ShuffleNet V2 (Ma et al. 2018), width 1.0, as adapted to CIFAR ----------------------------


class ShuffleV2Down(nn.Module):
    """Downsampling unit: the whole input through two strided branches, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.conv1, self.bn1 = conv3x3(cin, cin, 2, groups=cin), nn.BatchNorm2d(cin)  # left
        self.conv2, self.bn2 = conv1x1(cin, half), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = conv1x1(cin, half), nn.BatchNorm2d(half)  # right
        self.conv4, self.bn4 = conv3x3(half, half, 2, groups=half), nn.BatchNorm2d(half)
        self.conv5, self.bn5 = conv1x1(half, half), nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        return self.shuffle(torch.cat([left, F.relu(self.bn5(self.conv5(right)))], 1))


class ShuffleV2Basic(nn.Module):
    """Basic unit: half the channels pass through, the other half is transformed; concatenated, shuffled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = conv1x1(half, half), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = conv3x3(half, half, groups=half), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = conv1x1(half, half), nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, x = x.chunk(2, dim=1)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.shuffle(torch.cat([kept, F.relu(self.bn3(self.conv3(out)))], 1))


@register_model("shufflenetv2")
class ShuffleNetV2(nn.Module):
    """A 1x1 stem, `layer1..3` (one downsampling unit plus 3, 7, 3 basic units) at 116, 232, 464
    channels, a 1x1 conv to 1024 channels (`conv2`, `bn2`) and `linear`."""

    stage_modules = {"stem": "relu", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3"}
    classifier_module = "linear"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        cin = 24
        self.conv1, self.bn1 = conv1x1(image_channels(input_shape), cin), nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        for index, (width, units) in enumerate(((116, 3), (232, 7), (464, 3)), start=1):
            setattr(self, f"layer{index}", nn.Sequential(ShuffleV2Down(cin, width),
                                                         *(ShuffleV2Basic(width) for _ in range(units))))
            cin = width
        self.conv2, self.bn2 = conv1x1(cin, 1024), nn.BatchNorm2d(1024)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return pooled_logits(F.relu(self.bn2(self.conv2(x))), self.linear)
