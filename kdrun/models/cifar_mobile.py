"""The mobile models of the CIFAR zoo: MobileNetV2 at half width (RepDistiller's `mobile_half`:
`conv1, blocks, conv2, classifier`) and ShuffleNet V1/V2 as adapted to 32x32 inputs
(`conv1, bn1, layer1..3, linear`), as RepDistiller and mdistiller define them (see kdrun/models/cifar.py
for the conventions: peers' module names and initialisation, global pooling, named stages).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models.cifar import conv1x1, conv3x3, init_like_peers, pooled_logits
from kdrun.models.registry import image_channels, register_model

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
