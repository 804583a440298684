"""The AVS-SAN landmark network: SAN's ITN-CPM with two CycleGAN style generators inside.

Layout (module names match the published checkpoint's keys exactly, after the DataParallel
``module.`` prefix is removed; 144 tensors, 35,018,095 parameters at full width):

* ``netG_A``, ``netG_B`` - CycleGAN ResNet generators (reflection padding, 7x7 stem, two
  stride-2 convolutions, 6 residual blocks, two transposed convolutions, 7x7 head, ``tanh``;
  ``InstanceNorm2d(affine=False)`` everywhere, so they carry no normalisation parameters).
* ``features`` - VGG-16 ``conv1_1`` ... ``conv4_3`` (three max-pools: stride 8).
* ``CPM_feature`` - 512 -> 256 -> 128 (3x3).
* ``stage1`` / ``stage2`` / ``stage3`` - the three CPM stages; each predicts ``pts_num`` = 98
  landmarks + 1 background map.

Data flow (SAN's "style aggregation", kept as the original): the network input ``x`` is the
crop normalised to ``[-1, 1]`` (mean 0.5, std 0.5). The generators map that same tensor to
two style-translated images whose ``tanh`` outputs are already in ``[-1, 1]``, i.e. the same
range as ``x``; their average ``(G_A(x) + G_B(x)) / 2`` is used directly as a second input,
without any re-normalisation. Both inputs go through the *shared* ``features`` and
``CPM_feature``; ``stage1`` runs on each; ``stage2`` sees
``cat(feat, feat_style, stage1, stage1_style)`` and ``stage3`` sees
``cat(feat, feat_style, stage2)``.

``width_div`` divides every hidden channel width (not the 3 image channels nor the 99 maps)
so tests can build a cheap network with the same key names.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResnetBlock", "ResnetGenerator", "ITNCPM", "NUM_MAPS", "NUM_POINTS"]

NUM_POINTS = 98
NUM_MAPS = NUM_POINTS + 1  # + background, SAN's ``pts_num``


def _w(channels: int, width_div: int) -> int:
    return max(1, channels // width_div)


class ResnetBlock(nn.Module):
    """Residual block of the CycleGAN generator: ``x + IN(conv(pad(relu(IN(conv(pad(x)))))))``.

    ``conv_block`` indices: 0 pad, 1 conv, 2 IN, 3 ReLU, 4 pad, 5 conv, 6 IN.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim, affine=False),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator (Johnson et al.), as used by SAN's ITN.

    Shape:
        ``(N, 3, H, W) -> (N, 3, H, W)`` in ``[-1, 1]`` (``tanh``); ``H``, ``W`` multiples of 4.
    """

    def __init__(self, n_blocks: int = 6, width_div: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = _w(64, width_div), _w(128, width_div), _w(256, width_div)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),  # 0
            nn.Conv2d(3, c1, kernel_size=7, padding=0, bias=True),  # 1
            nn.InstanceNorm2d(c1, affine=False),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1, bias=True),  # 4
            nn.InstanceNorm2d(c2, affine=False),
            nn.ReLU(),
            nn.Conv2d(c2, c3, kernel_size=3, stride=2, padding=1, bias=True),  # 7
            nn.InstanceNorm2d(c3, affine=False),
            nn.ReLU(),
        ]
        layers += [ResnetBlock(c3) for _ in range(n_blocks)]  # 10 .. 15
        layers += [
            nn.ConvTranspose2d(c3, c2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True),  # 16
            nn.InstanceNorm2d(c2, affine=False),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True),  # 19
            nn.InstanceNorm2d(c1, affine=False),
            nn.ReLU(),
            nn.ReflectionPad2d(3),
            nn.Conv2d(c1, 3, kernel_size=7, padding=0),  # 23
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _conv_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2), nn.ReLU()]


def _cpm_stage(cin: int, c: int, n_maps: int) -> nn.Sequential:
    """A refinement stage (stage 2 / 3): three 7x7, four 3x3, one 1x1 conv, then the maps."""
    layers = _conv_relu(cin, c, 7) + _conv_relu(c, c, 7) + _conv_relu(c, c, 7)
    for _ in range(4):
        layers += _conv_relu(c, c, 3)
    layers += _conv_relu(c, c, 1)
    layers.append(nn.Conv2d(c, n_maps, kernel_size=1))
    return nn.Sequential(*layers)


class ITNCPM(nn.Module):
    """SAN's ITN-CPM with 3 CPM stages, 98 points + background (the AVS-SAN detector).

    Args:
        width_div: divide hidden channel widths by this (1 = the published network).

    Shape:
        ``forward``: ``(N, 3, 128, 128)`` normalised to ``[-1, 1]`` ->
        list of 4 maps ``(N, 99, 16, 16)``: ``[stage1, stage1_style, stage2, stage3]``
        (the original's ``batch_cpms`` order). Landmarks come from ``stage3``; channel 98 is
        the background.
    """

    stride = 8

    def __init__(self, width_div: int = 1) -> None:
        super().__init__()
        if width_div < 1:
            raise ValueError(f"width_div must be >= 1, got {width_div}")
        w = lambda c: _w(c, width_div)  # noqa: E731
        self.width_div = width_div
        self.netG_A = ResnetGenerator(width_div=width_div)
        self.netG_B = ResnetGenerator(width_div=width_div)
        pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.features = nn.Sequential(
            *_conv_relu(3, w(64), 3), *_conv_relu(w(64), w(64), 3), pool,
            *_conv_relu(w(64), w(128), 3), *_conv_relu(w(128), w(128), 3), pool,
            *_conv_relu(w(128), w(256), 3), *_conv_relu(w(256), w(256), 3),
            *_conv_relu(w(256), w(256), 3), pool,
            *_conv_relu(w(256), w(512), 3), *_conv_relu(w(512), w(512), 3),
            *_conv_relu(w(512), w(512), 3),
        )  # fmt: skip
        c = w(128)
        self.CPM_feature = nn.Sequential(*_conv_relu(w(512), w(256), 3), *_conv_relu(w(256), c, 3))
        self.stage1 = nn.Sequential(
            *_conv_relu(c, c, 3), *_conv_relu(c, c, 3), *_conv_relu(c, c, 3), *_conv_relu(c, c, 3),
            *_conv_relu(c, w(512), 1), nn.Conv2d(w(512), NUM_MAPS, kernel_size=1),
        )  # fmt: skip
        self.stage2 = _cpm_stage(2 * c + 2 * NUM_MAPS, c, NUM_MAPS)
        self.stage3 = _cpm_stage(2 * c + NUM_MAPS, c, NUM_MAPS)

    def styled_input(self, x: torch.Tensor) -> torch.Tensor:
        """The style-aggregated second input: the mean of both generators' outputs."""
        return (self.netG_A(x) + self.netG_B(x)) / 2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, stage1s = [], []
        for inp in (x, self.styled_input(x)):
            f = self.CPM_feature(self.features(inp))
            feats.append(f)
            stage1s.append(self.stage1(f))
        xfeat = torch.cat(feats, dim=1)
        s2 = self.stage2(torch.cat([xfeat, stage1s[0], stage1s[1]], dim=1))
        s3 = self.stage3(torch.cat([xfeat, s2], dim=1))
        return [stage1s[0], stage1s[1], s2, s3]
