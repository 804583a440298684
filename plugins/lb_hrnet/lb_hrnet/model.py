"""HRNetV2 for facial landmarks, laid out like the WFLW configuration of the original code.

The layout (and therefore every parameter name) follows HRNet-Facial-Landmark-Detection's
``HighResolutionNet`` with the WFLW yaml, so that the published ``HR18-WFLW.pth`` loads
strictly:

* stem: ``conv1`` 3x3 s2 (3->64), ``bn1``, ReLU, ``conv2`` 3x3 s2 (64->64), ``bn2``, ReLU;
* ``layer1``: four Bottlenecks (64 -> 256 channels, at 1/4 of the input resolution);
* ``transition1`` -> ``stage2`` (1 module, 2 branches) -> ``transition2`` -> ``stage3``
  (4 modules, 3 branches) -> ``transition3`` -> ``stage4`` (3 modules, 4 branches); every branch
  holds four BasicBlocks, branch ``b`` has ``width * 2**b`` channels (18/36/72/144 for W18);
* head: the four branches resized to the first branch's resolution (bilinear,
  ``align_corners=False``), concatenated (``15 * width`` channels) -> 1x1 conv (bias) -> BN ->
  ReLU -> 1x1 conv (bias) to one heat-map per landmark, no final activation.

A 256x256 input gives ``(B, landmarks, 64, 64)`` heat-maps. ``width`` changes only the channel
counts, never a parameter name, so small widths (6, 8) give cheap CPU models with the same keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HighResolutionNet", "BasicBlock", "Bottleneck", "HighResolutionModule"]

# The original trains with this BatchNorm momentum; it has no effect on inference.
BN_MOMENTUM = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with an identity shortcut (``expansion`` 1)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block used by ``layer1``."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by the multi-resolution fusion.

    ``fuse_layers[i][j]`` brings branch ``j`` to branch ``i``'s resolution and width:
    ``j > i``: 1x1 conv + BN, then bilinear upsampling in ``forward``; ``j < i``: ``i - j``
    stride-2 3x3 conv + BN steps (ReLU after all but the last); ``j == i``: ``None`` (identity,
    no parameters - hence the gaps in the checkpoint's key indices).
    """

    def __init__(self, channels: list[int], num_blocks: int = 4) -> None:
        super().__init__()
        self.num_branches = len(channels)
        # All branches already have their final width, so no block needs a downsample.
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels
        )
        self.fuse_layers: nn.ModuleList | None = self._make_fuse_layers(channels) if self.num_branches > 1 else None
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _make_fuse_layers(channels: list[int]) -> nn.ModuleList:
        n = len(channels)
        rows = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, 1, 0, bias=False), _bn(channels[i])))
                elif j == i:
                    row.append(None)  # type: ignore[arg-type]  # identity; keeps the key indices
                else:
                    steps: list[nn.Module] = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(_conv3x3(channels[j], channels[i], 2), _bn(channels[i])))
                        else:
                            steps.append(nn.Sequential(_conv3x3(channels[j], channels[j], 2), _bn(channels[j]), nn.ReLU(inplace=True)))
                    row.append(nn.Sequential(*steps))
            rows.append(row)
        return rows

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            assert isinstance(row, nn.ModuleList)
            # Sum in the original's order (branch 0 first) so float results match it closely.
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + F.interpolate(row[j](xs[j]), size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                else:
                    y = y + row[j](xs[j])
            fused.append(self.relu(y))
        return fused


def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
    """Adapt the previous stage's branches to the next stage's (``None`` where unchanged);
    a new branch comes from the lowest-resolution previous branch via stride-2 3x3 convs."""
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(prev):
            if c != prev[i]:
                layers.append(nn.Sequential(_conv3x3(prev[i], c), _bn(c), nn.ReLU(inplace=True)))
            else:
                layers.append(None)  # type: ignore[arg-type]  # unchanged branch, no keys
        else:
            steps = []
            for k in range(i + 1 - len(prev)):
                cout = c if k == i - len(prev) else prev[-1]
                steps.append(nn.Sequential(_conv3x3(prev[-1], cout, 2), _bn(cout), nn.ReLU(inplace=True)))
            layers.append(nn.Sequential(*steps))
    return layers


class HighResolutionNet(nn.Module):
    """HRNetV2 with the facial-landmark head (the original's WFLW configuration).

    Args:
        width: channels of the highest-resolution branch (18 for HRNetV2-W18; the other
            branches have 2x, 4x, 8x as many).
        landmarks: number of output heat-maps (98 for WFLW).

    Shape:
        ``(B, 3, H, W)`` normalised RGB -> ``(B, landmarks, H/4, W/4)`` heat-maps
        (H and W multiples of 32).
    """

    def __init__(self, width: int = 18, landmarks: int = 98) -> None:
        super().__init__()
        if width < 1 or landmarks < 1:
            raise ValueError(f"HighResolutionNet: width and landmarks must be positive (got {width}, {landmarks})")
        self.width = width
        self.landmarks = landmarks
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(64, 256, kernel_size=1, bias=False), _bn(256))
        self.layer1 = nn.Sequential(Bottleneck(64, 64, downsample=down), *[Bottleneck(256, 64) for _ in range(3)])

        c2 = [width, 2 * width]
        c3 = [*c2, 4 * width]
        c4 = [*c3, 8 * width]
        self.transition1 = _transition([256], c2)
        self.stage2 = nn.Sequential(HighResolutionModule(c2))
        self.transition2 = _transition(c2, c3)
        self.stage3 = nn.Sequential(*[HighResolutionModule(c3) for _ in range(4)])
        self.transition3 = _transition(c3, c4)
        self.stage4 = nn.Sequential(*[HighResolutionModule(c4) for _ in range(3)])

        final = sum(c4)
        self.head = nn.Sequential(
            nn.Conv2d(final, final, kernel_size=1, stride=1, padding=0),
            _bn(final),
            nn.ReLU(inplace=True),
            nn.Conv2d(final, landmarks, kernel_size=1, stride=1, padding=0),
        )
        self.init_weights()

    def init_weights(self) -> None:
        """The original's random initialisation: conv weights N(0, 0.001), BN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)

    @staticmethod
    def _apply_transition(layers: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        # As the original: an unchanged branch passes through; every transition layer takes
        # the last (lowest-resolution) input branch.
        return [xs[i] if t is None else t(xs[-1]) for i, t in enumerate(layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        xs = [t(x) for t in self.transition1]
        xs = self.stage2(xs)
        xs = self.stage3(self._apply_transition(self.transition2, xs))
        xs = self.stage4(self._apply_transition(self.transition3, xs))
        size = xs[0].shape[-2:]
        up = [xs[0]] + [F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in xs[1:]]
        return self.head(torch.cat(up, dim=1))
