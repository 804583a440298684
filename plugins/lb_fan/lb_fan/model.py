"""The Face Alignment Network (FAN) of Bulat & Tzimiropoulos (ICCV 2017).

A stack of hourglasses built from pre-activation "ConvBlock"s (hierarchical, parallel and
multi-scale blocks). Module and parameter names follow face-alignment's ``FAN`` exactly
(``conv1``, ``bn1``, ``conv2``..``conv4``, then per stack ``m{i}``, ``top_m_{i}``,
``conv_last{i}``, ``bn_end{i}``, ``l{i}`` and, between stacks, ``bl{i}``, ``al{i}``), so the
published 2D-FAN state dict and pyhowfar training checkpoints load strictly.

``width`` scales every feature width proportionally (256 is the published network: stem
64 -> 128 -> 128 -> 256). Smaller widths keep the same keys with smaller shapes, for cheap
test and training models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lbcore import ResidualAdd

__all__ = ["ConvBlock", "HourGlass", "FAN"]


def _conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)


def _child(parent: nn.Module, name: str) -> nn.Module:
    """A named submodule (the original addresses its layers by generated names)."""
    module = parent._modules[name]
    assert module is not None
    return module


class ConvBlock(nn.Module):
    """Pre-activation block whose output concatenates three successive 3x3 convolutions.

    ``bn1 -> relu -> conv1`` gives ``out/2`` channels, ``bn2 -> relu -> conv2`` ``out/4`` and
    ``bn3 -> relu -> conv3`` ``out/4``; their concatenation is added to the input, which goes
    through ``downsample = (BN, ReLU, 1x1 conv)`` when the widths differ.

    Shape:
        ``(B, in_planes, H, W) -> (B, out_planes, H, W)``
    """

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        if out_planes % 4:
            raise ValueError(f"ConvBlock width {out_planes} is not a multiple of 4")
        half, quarter = out_planes // 2, out_planes // 4
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        self.downsample: nn.Sequential | None = None
        if in_planes != out_planes:
            # Indices 0 and 2 carry the checkpoint keys (downsample.0.*, downsample.2.weight).
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_planes),
                nn.ReLU(),
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, bias=False),
            )
        self.add = ResidualAdd()  # (no parameters: the checkpoint keys are unchanged)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.add(residual, torch.cat((out1, out2, out3), dim=1))


class HourGlass(nn.Module):
    """Recursive hourglass of ``depth`` levels on ``features`` channels.

    At each level: an upper branch ``b1_L`` at full resolution, and a lower branch that
    average-pools by 2, applies ``b2_L``, recurses (``b2_plus_1`` at the bottom), applies
    ``b3_L`` and upsamples by 2 (nearest); the two branches are summed. Average pooling, not
    max pooling, is what FAN uses.

    Shape:
        ``(B, features, H, W) -> (B, features, H, W)``; ``H`` and ``W`` divisible by
        ``2 ** depth``.
    """

    def __init__(self, depth: int = 4, features: int = 256) -> None:
        super().__init__()
        self.depth = depth
        # Registration order follows the original (b1_4, b2_4, b1_3, ..., b2_plus_1, b3_1..b3_4)
        # so that state_dict() lists keys in the checkpoint's order.
        self._build(depth, features)

    def _build(self, level: int, features: int) -> None:
        self.add_module(f"b1_{level}", ConvBlock(features, features))
        self.add_module(f"b2_{level}", ConvBlock(features, features))
        if level > 1:
            self._build(level - 1, features)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(features, features))
        self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _forward(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = _child(self, f"b1_{level}")(x)
        low = _child(self, f"b2_{level}")(F.avg_pool2d(x, 2, stride=2))
        low = self._forward(level - 1, low) if level > 1 else _child(self, f"b2_plus_{level}")(low)
        low = _child(self, f"b3_{level}")(low)
        return up1 + F.interpolate(low, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.depth, x)


class FAN(nn.Module):
    """Stacked-hourglass FAN returning the heat-maps of every stack.

    Args:
        num_modules: number of stacked hourglasses (1 in the paper's pyhowfar model, 4 in the
            published 2D-FAN).
        num_landmarks: heat-maps per stack (98 for WFLW, 68 for 300-W).
        width: hourglass feature width (256 in every published model); the stem widths are
            ``width/4, width/2, width/2``. Must be a multiple of 8.

    Shape:
        ``(B, 3, 256, 256) -> [ (B, num_landmarks, 64, 64) ] * num_modules``
    """

    def __init__(self, num_modules: int = 1, num_landmarks: int = 68, width: int = 256) -> None:
        super().__init__()
        if num_modules < 1:
            raise ValueError(f"FAN needs at least one hourglass, got num_modules={num_modules}")
        if width < 8 or width % 8:
            raise ValueError(f"FAN width must be a positive multiple of 8, got {width}")
        self.num_modules = num_modules
        self.num_landmarks = num_landmarks
        self.width = width
        stem1, stem2 = width // 4, width // 2

        self.conv1 = nn.Conv2d(3, stem1, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(stem1)
        self.conv2 = ConvBlock(stem1, stem2)
        self.conv3 = ConvBlock(stem2, stem2)
        self.conv4 = ConvBlock(stem2, width)

        for i in range(num_modules):
            self.add_module(f"m{i}", HourGlass(4, width))
            self.add_module(f"top_m_{i}", ConvBlock(width, width))
            self.add_module(f"conv_last{i}", nn.Conv2d(width, width, kernel_size=1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(width))
            self.add_module(f"l{i}", nn.Conv2d(width, num_landmarks, kernel_size=1))
            if i < num_modules - 1:
                # Intermediate supervision: features and heat-maps are fed back to the next stack.
                self.add_module(f"bl{i}", nn.Conv2d(width, width, kernel_size=1))
                self.add_module(f"al{i}", nn.Conv2d(num_landmarks, width, kernel_size=1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        x = self.conv4(self.conv3(x))

        previous = x
        outputs: list[torch.Tensor] = []
        for i in range(self.num_modules):
            ll = _child(self, f"top_m_{i}")(_child(self, f"m{i}")(previous))
            ll = F.relu(_child(self, f"bn_end{i}")(_child(self, f"conv_last{i}")(ll)))
            heatmaps = _child(self, f"l{i}")(ll)
            outputs.append(heatmaps)
            if i < self.num_modules - 1:
                previous = previous + _child(self, f"bl{i}")(ll) + _child(self, f"al{i}")(heatmaps)
        return outputs
