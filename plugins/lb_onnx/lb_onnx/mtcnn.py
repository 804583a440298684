"""MTCNN's output network (ONet, Zhang et al. 2016) as a 5-point coordinate extractor.

The weights are the ``onet.pt`` state dict that the ``facenet-pytorch`` wheel ships (converted
there from the authors' Caffe model); it is read with ``torch.load(weights_only=True)`` into
the module below, written here from the published architecture: three 3x3 convolutions with
PReLU and ceil-mode max pooling (3/2, 3/2, 2/2), a 2x2 convolution to 128 channels, a
1152 -> 256 dense layer and three heads (face probability, box regression, 10 landmark
values). The dense layer reads the feature map in (width, height, channel) order - the
Caffe layout the weights were trained in.

How MTCNN places its points (facenet-pytorch's ``detect_face``), mirrored here:

* the output stage sees the box made square around its centre (side = the longer side);
* the window from ``trunc(x1) - 1`` to ``trunc(x2)`` (inclusive, 0-based) is shrunk to 48x48
  by area averaging, RGB, ``(x - 127.5) / 128``; here the float box is used (differentiably),
  area averaging is approximated by bilinear sampling at ``supersample`` times the resolution
  followed by average pooling;
* point ``i`` is ``x = x1 - 1 + (w + 1) p_i``, ``y = y1 - 1 + (h + 1) p_{5+i}`` for the
  network's 10 outputs ``p`` (fractions of the square window).

The 5 points, image-left first: eye, eye, nose tip, mouth corner, mouth corner. The eye
centres normalise NME.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lbcore import ExtractorOutput, Faces
from lbcore.extractor import Extractor, affine_crop, render_gaussians
from lbcore.types import LandmarkScheme
from lbcore.weights import extract_state_dict, load_checkpoint, load_state_dict_strict

__all__ = ["ONet", "ONetExtractor", "MTCNN5", "square_boxes"]

MTCNN5 = LandmarkScheme("mtcnn5", 5, (0, 1), (1, 0, 2, 4, 3))
"""MTCNN's 5 points; a horizontal flip swaps the eyes and the mouth corners."""


class ONet(nn.Module):
    """The ONet layout (parameter names as in facenet-pytorch's ``onet.pt``).

    Shape:
        ``(N, 3, 48, 48)`` normalised RGB -> box regression ``(N, 4)``, landmarks ``(N, 10)``
        (5 x values, then 5 y values, in window fractions), face probability ``(N, 2)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(3 * 3 * 128, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        # (N, C, H, W) -> (N, W, H, C): the Caffe order the dense weights expect
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """MTCNN's ``rerec``: each box made square (the longer side) around its centre."""
    b = boxes.to(torch.float32)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    x1 = b[:, 0] + 0.5 * (w - side)
    y1 = b[:, 1] + 0.5 * (h - side)
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


class ONetExtractor(Extractor):
    """ONet on MTCNN's output-stage crop (see the module docstring).

    Args:
        square: square the boxes first (MTCNN does; the project's boxes come from its own
            detector, not from MTCNN's refinement network).
        supersample: sampling factor before the area averaging down to 48x48.
        heatmap_size, sigma: Gaussian heat-maps rendered from the points (for Eq. 1).
    """

    scheme = MTCNN5
    input_size = (48, 48)

    def __init__(self, square: bool = True, supersample: int = 4, heatmap_size: int = 32, sigma: float = 1.0) -> None:
        super().__init__()
        self.net = ONet()
        self.square = bool(square)
        self.supersample = max(1, int(supersample))
        self.heatmap_size = int(heatmap_size)
        self.sigma = float(sigma)

    def windows(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(F, 4)`` ``x0, y0, width, height`` of the window each face's points refer to."""
        b = square_boxes(boxes) if self.square else boxes.to(torch.float32)
        return torch.stack([b[:, 0] - 1, b[:, 1] - 1, b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1], 1)

    def crop_theta(self, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """Crop pixel -> image pixel: ``size`` pixel squares tiling each window's pixel squares."""
        win = self.windows(boxes)
        sx = win[:, 2] / size
        sy = win[:, 3] / size
        z = torch.zeros_like(sx)
        # window pixel squares span [x0 - 0.5, x0 + width - 0.5]; crop pixel u has centre u + 0.5
        ox = win[:, 0] - 0.5 + 0.5 * sx
        oy = win[:, 1] - 0.5 + 0.5 * sy
        return torch.stack([torch.stack([sx, z, ox], 1), torch.stack([z, sy, oy], 1)], 1)

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        boxes = faces.boxes.to(images.device, torch.float32)
        k = self.supersample
        theta = self.crop_theta(boxes, 48 * k)
        crops = affine_crop(images, faces.image_index, theta, (48 * k, 48 * k))
        if k > 1:
            crops = torch.nn.functional.avg_pool2d(crops, k)
        _, pts, prob = self.net((crops - 127.5) * 0.0078125)
        win = self.windows(boxes)
        frac = torch.stack([pts[:, :5], pts[:, 5:]], dim=-1)  # (F, 5, 2) window fractions
        landmarks = win[:, None, :2] + frac * win[:, None, 2:]
        m = self.heatmap_size
        heatmaps = render_gaussians(frac * m - 0.5, m, self.sigma)
        sx, sy = win[:, 2] / m, win[:, 3] / m
        z = torch.zeros_like(sx)
        hm_to_image = torch.stack([torch.stack([sx, z, win[:, 0] + 0.5 * sx], 1),
                                   torch.stack([z, sy, win[:, 1] + 0.5 * sy], 1)], 1)
        return ExtractorOutput(heatmaps=heatmaps, landmarks=landmarks, hm_to_image=hm_to_image,
                               extra={"face_probability": prob[:, 1], "crop_theta": theta})

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        if output.landmarks is None:
            raise ValueError("ONetExtractor.decode needs landmarks")
        return output.landmarks.detach().to(torch.float32)

    def load_weights(self, path: str | Path) -> dict[str, Any]:
        """Load an ONet state dict strictly (never executing code from the file)."""
        sd = extract_state_dict(load_checkpoint(path), path)
        return load_state_dict_strict(self.net, sd, path)
