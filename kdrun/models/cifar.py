"""The CIFAR model zoo of the distillation literature (RepDistiller / CRD, mdistiller / DKD).

Shapes follow those repositories so that parameter counts and published accuracies carry
over: ResNets of He et al. 2016 (section 4.2) with RepDistiller's widths, wide ResNets
(Zagoruyko & Komodakis 2016), VGG with batch norm, MobileNetV2 at half width
(RepDistiller's `mobile_half`) and ShuffleNet V1/V2 as adapted to 32x32 inputs.
Each family is one parameterised builder; the depths and widths are registered as names.
The networks work on any (channels, height, width) input; the strides assume about 32x32.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from kdrun.models import image_channels, register_model


# --- building blocks shared by the families ---------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True,
            bias: bool = False) -> nn.Sequential:
    """Convolution ("same" padding), batch norm and optionally ReLU: the unit every family stacks."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Residual(nn.Module):
    """`after(join(body(x), shortcut(x)))`: added, or concatenated where ShuffleNet V1 downsamples."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None, concat: bool = False,
                 after: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut or nn.Identity()
        self.concat = concat
        self.after = after or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body, shortcut = self.body(x), self.shortcut(x)
        return self.after(torch.cat([body, shortcut], 1) if self.concat else body + shortcut)


class ChannelShuffle(nn.Module):
    """Interleave the channels of `groups` groups so grouped convolutions exchange information."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def head(channels: int, num_classes: int) -> nn.Sequential:
    """Global average pooling and a linear classifier."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def he_init(model: nn.Module) -> nn.Module:
    """He-normal convolutions (fan-out) with zero biases, as the reference ResNet, WRN, VGG and
    MobileNetV2 code initialise them (ShuffleNets keep PyTorch's defaults there too)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def register_variants(builder: Callable[..., nn.Module], variants: dict[str, tuple]) -> None:
    """Register `builder` once per name, its leading arguments fixed (they do not become user options)."""
    for name, args in variants.items():
        register_model(name)(partial(builder, *args))


# --- ResNet (RepDistiller resnet.py): 3 stages of (depth - 2) / 6 basic blocks ----------------


def basic_block(cin: int, cout: int, stride: int) -> Residual:
    shortcut = conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None
    body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, relu=False))
    return Residual(body, shortcut, after=nn.ReLU(inplace=True))


def resnet(depth: int, widths: Sequence[int], num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """Stem of widths[0] channels, then stages of widths[1:] at strides 1, 2, 2."""
    blocks = (depth - 2) // 6
    layers: list[nn.Module] = [conv_bn(image_channels(input_shape), widths[0], 3)]
    for stage, width in enumerate(widths[1:]):
        for i in range(blocks):
            layers.append(basic_block(widths[stage] if i == 0 else width, width, 2 if stage > 0 and i == 0 else 1))
    return he_init(nn.Sequential(*layers, head(widths[-1], num_classes)))


register_variants(resnet, {f"resnet{depth}": (depth, (16, 16, 32, 64)) for depth in (8, 14, 20, 32, 44, 56, 110)})
register_variants(resnet, {f"resnet{depth}x4": (depth, (32, 64, 128, 256)) for depth in (8, 32)})


# --- Wide ResNet (Zagoruyko & Komodakis 2016): pre-activation blocks, widths x k --------------


def bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def wide_block(cin: int, cout: int, stride: int) -> nn.Module:
    """Pre-activation block; where the shape changes, the 1x1 shortcut sees the activated input too."""
    body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), bn_relu(cout),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
    if stride == 1 and cin == cout:
        return Residual(nn.Sequential(bn_relu(cin), body))
    return nn.Sequential(bn_relu(cin), Residual(body, nn.Conv2d(cin, cout, 1, stride, bias=False)))


def wide_resnet(depth: int, widen: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """WRN-depth-widen: a 16-channel stem, then 3 stages of (depth - 4) / 6 blocks at 16k, 32k, 64k channels."""
    blocks = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers: list[nn.Module] = [nn.Conv2d(image_channels(input_shape), 16, 3, 1, 1, bias=False)]
    for stage, width in enumerate(widths[1:]):
        for i in range(blocks):
            layers.append(wide_block(widths[stage] if i == 0 else width, width, 2 if stage > 0 and i == 0 else 1))
    return he_init(nn.Sequential(*layers, bn_relu(widths[-1]), head(widths[-1], num_classes)))


register_variants(wide_resnet, {f"wrn_{depth}_{widen}": (depth, widen) for depth in (16, 40) for widen in (1, 2)})


# --- VGG with batch norm (RepDistiller vgg.py): 5 blocks of 3x3 convs, a linear classifier ----

VGG_BLOCKS = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def vgg(convs_per_block: Sequence[int], num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """Blocks of 64, 128, 256, 512, 512 channels; max-pooling after the first three (and the fourth
    from 64x64 inputs up, as RepDistiller does for Tiny-ImageNet), global pooling after the last."""
    cin = image_channels(input_shape)
    pooled = 4 if min(input_shape[1:]) >= 64 else 3
    layers: list[nn.Module] = []
    for block, (width, convs) in enumerate(zip((64, 128, 256, 512, 512), convs_per_block)):
        for _ in range(convs):
            layers.append(conv_bn(cin, width, 3, bias=True))
            cin = width
        layers += [nn.MaxPool2d(2)] if block < pooled else []
    return he_init(nn.Sequential(*layers, head(512, num_classes)))


register_variants(vgg, {name: (blocks,) for name, blocks in VGG_BLOCKS.items()})


# --- MobileNetV2 (Sandler et al. 2018), RepDistiller's `mobile_half` for CIFAR ----------------

# (expansion, channels at width 1, blocks, first stride) per stage; RepDistiller's T = 6.
MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))


def inverted_residual(cin: int, cout: int, stride: int, expansion: int) -> nn.Module:
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when the shape is kept."""
    hidden = cin * expansion
    body = nn.Sequential(conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                         conv_bn(hidden, cout, 1, relu=False))
    return Residual(body) if stride == 1 and cin == cout else body


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """Width 0.5 with a full 1280-channel last conv; a stride-2 stem, so 32x32 ends at 2x2."""
    width = 0.5
    cin = int(32 * width)
    layers: list[nn.Module] = [conv_bn(image_channels(input_shape), cin, 3, 2)]
    for expansion, channels, blocks, stride in MOBILENET_STAGES:
        for i in range(blocks):
            cout = int(channels * width)
            layers.append(inverted_residual(cin, cout, stride if i == 0 else 1, expansion))
            cin = cout
    return he_init(nn.Sequential(*layers, conv_bn(cin, 1280, 1), head(1280, num_classes)))


# --- ShuffleNet V1 (Zhang et al. 2018), groups 3, as adapted to CIFAR --------------------------


def shuffle_v1_unit(cin: int, cout: int, stride: int, groups: int) -> Residual:
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a downsampling unit concatenates an
    average-pooled input, so its branch makes only `cout - cin` channels. The first unit, on
    the 24-channel stem, has too few channels to group its first 1x1."""
    branch = cout - cin if stride == 2 else cout
    mid, first_groups = branch // 4, 1 if cin == 24 else groups
    body = nn.Sequential(conv_bn(cin, mid, 1, groups=first_groups), ChannelShuffle(first_groups),
                         conv_bn(mid, mid, 3, stride, groups=mid), conv_bn(mid, branch, 1, groups=groups, relu=False))
    shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
    return Residual(body, shortcut, concat=stride == 2, after=nn.ReLU(inplace=True))


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """A 1x1 stem, then 3 stages of 4, 8, 4 units at 240, 480, 960 channels (groups 3)."""
    cin, groups = 24, 3
    layers: list[nn.Module] = [conv_bn(image_channels(input_shape), cin, 1)]
    for width, units in ((240, 4), (480, 8), (960, 4)):
        for i in range(units):
            layers.append(shuffle_v1_unit(cin, width, 2 if i == 0 else 1, groups))
            cin = width
    return nn.Sequential(*layers, head(cin, num_classes))


# --- ShuffleNet V2 (Ma et al. 2018), width 1.0, as adapted to CIFAR ----------------------------


class ShuffleV2Unit(nn.Module):
    """Two branches concatenated then shuffled. A basic unit passes half the channels through
    and transforms the other half; a downsampling unit transforms the whole input twice."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.left = None if stride == 1 else nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False),
                                                          conv_bn(cin, half, 1))
        right_in = half if stride == 1 else cin
        self.right = nn.Sequential(conv_bn(right_in, half, 1), conv_bn(half, half, 3, stride, groups=half, relu=False),
                                   conv_bn(half, half, 1))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            kept, x = x.chunk(2, dim=1)
        else:
            kept = self.left(x)
        return self.shuffle(torch.cat([kept, self.right(x)], 1))


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """A 1x1 stem, 3 stages (one downsampling unit plus 3, 7, 3 basic units) at 116, 232, 464
    channels, and a 1x1 conv to 1024 channels."""
    cin = 24
    layers: list[nn.Module] = [conv_bn(image_channels(input_shape), cin, 1)]
    for width, units in ((116, 3), (232, 7), (464, 3)):
        layers += [ShuffleV2Unit(cin, width, 2)] + [ShuffleV2Unit(width, width, 1) for _ in range(units)]
        cin = width
    return nn.Sequential(*layers, conv_bn(cin, 1024, 1), head(1024, num_classes))
