"""A small coordinate-regression landmark extractor, written against lbcore's public contract.

The network sees a square crop around each face box (its own crop rule: side = ``context``
times the box's mean side, centred on the box) and regresses the 68 iBUG landmarks as
coordinates in the crop, in ``[0, 1]``. Nothing about heat-maps is inside it; to let the paper's
Eq. 1 (``heatmap-cosine``) attack it anyway, :meth:`CoordinateRegressor.forward` *renders*
Gaussian heat-maps from the coordinates, differentiably, so the gradient of Eq. 1 flows through
the rendering into the coordinates and from there into the image pixels.

Without trained weights the output layer starts at a mean face shape: its bias is the shape
below (placed in the crop) and its weights are small, so the landmarks land on the face box from
the first call and still depend (a little) on the pixels - enough to attack and to evaluate, not
to be accurate.
"""

from __future__ import annotations

import math

import torch

from lbcore import ExtractorOutput, Faces
from lbcore.extractor import Extractor, affine_crop, apply_affine, compose_affine, scale_affine
from lbcore.schemes import IBUG68

__all__ = ["CoordinateRegressor", "mean_face_in_box", "render_heatmaps"]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int) -> list[tuple[float, float]]:
    """``n`` points on an elliptical arc from angle ``start`` to ``stop`` (degrees; y points down)."""
    out = []
    for i in range(n):
        a = math.radians(start + (stop - start) * i / max(n - 1, 1))
        out.append((cx + rx * math.cos(a), cy + ry * math.sin(a)))
    return out


def mean_face_in_box() -> torch.Tensor:
    """A schematic frontal face in the iBUG-68 order, in box units: ``(68, 2)`` with the
    tight box (brows to chin, temple to temple) mapped to ``[0, 1]^2``.

    Built from simple arcs, not measured from any data set; the subject's right side is on the
    image's left, as in the iBUG layout (see :mod:`lbcore.schemes`).
    """
    pts: list[tuple[float, float]] = []
    pts += _arc(0.5, 0.22, 0.5, 0.78, 180.0, 0.0, 17)  # 0-16 contour, right temple -> chin -> left
    pts += _arc(0.30, 0.10, 0.13, 0.10, 200.0, 340.0, 5)  # 17-21 right brow, outer -> inner
    pts += _arc(0.70, 0.10, 0.13, 0.10, 200.0, 340.0, 5)  # 22-26 left brow, inner -> outer
    pts += [(0.5, 0.24 + 0.09 * i) for i in range(4)]  # 27-30 nose bridge, top -> tip
    pts += [(0.42 + 0.04 * i, 0.60 + (0.02 if i == 2 else 0.0)) for i in range(5)]  # 31-35 nostrils
    for cx in (0.31, 0.69):  # 36-41 right eye, 42-47 left eye: corner, upper lid x2, corner, lower lid x2
        pts += [(cx - 0.10, 0.26), (cx - 0.04, 0.23), (cx + 0.04, 0.23),
                (cx + 0.10, 0.26), (cx + 0.04, 0.29), (cx - 0.04, 0.29)]
    pts += _arc(0.5, 0.78, 0.16, 0.04, 180.0, 360.0, 7)  # 48-54 outer upper lip, right corner -> left
    pts += _arc(0.5, 0.78, 0.16, 0.09, 0.0, 180.0, 7)[1:-1]  # 55-59 outer lower lip, left -> right
    pts += _arc(0.5, 0.79, 0.11, 0.015, 180.0, 360.0, 5)  # 60-64 inner upper lip
    pts += _arc(0.5, 0.79, 0.11, 0.04, 0.0, 180.0, 5)[1:-1]  # 65-67 inner lower lip
    shape = torch.tensor(pts, dtype=torch.float32)
    # the arcs overshoot a little: make the shape's tight box exactly [0, 1]^2
    lo, hi = shape.min(0).values, shape.max(0).values
    return (shape - lo) / (hi - lo)


def render_heatmaps(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Gaussian heat-maps ``(F, K, size, size)`` centred on ``points`` ``(F, K, 2)`` given in
    heat-map pixels (centres at integers); differentiable with respect to ``points``."""
    grid = torch.arange(size, device=points.device, dtype=points.dtype)
    dx = (grid[None, None, None, :] - points[..., 0, None, None]) ** 2
    dy = (grid[None, None, :, None] - points[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2.0 * sigma * sigma))


class CoordinateRegressor(Extractor):
    """Crop -> four strided convolutions -> a linear layer -> 68 ``(x, y)`` in the crop.

    Args:
        input_size: side of the square crop the network sees (pixels).
        context: crop side as a multiple of the box's mean side.
        heatmaps: also render Gaussian heat-maps from the coordinates (for Eq. 1).
        heatmap_size: side of the rendered heat-maps; they cover the crop.
        sigma: Gaussian width in heat-map pixels.
        seed: seeds the random initialisation (weights ``none``).
    """

    scheme = IBUG68

    def __init__(self, input_size: int = 64, context: float = 1.3, heatmaps: bool = True,
                 heatmap_size: int = 32, sigma: float = 1.5, seed: int = 0) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.context = float(context)
        self.render = bool(heatmaps)
        self.heatmap_size = int(heatmap_size)
        self.sigma = float(sigma)
        k = self.scheme.num_points
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=2, padding=2), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4),
        )
        self.head = torch.nn.Linear(64 * 16, k * 2)
        self._initialise(seed)

    def _initialise(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.features:
                if isinstance(m, torch.nn.Conv2d):
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                    if m.bias is not None:
                        m.bias.zero_()
            # small weights: the image moves the points by a few per cent of the crop
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * 2e-3)
            box_in_crop = 0.5 + (mean_face_in_box() - 0.5) / self.context
            self.head.bias.copy_(box_in_crop.flatten())

    # -- the crop rule ---------------------------------------------------------------------
    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(F, 4)`` boxes -> ``(F, 2, 3)`` maps from crop pixels to image pixels.

        The crop is a square of side ``context * (w + h) / 2`` centred on the box; crop pixel
        ``u`` (centre) covers image pixels ``[left + u * s, left + (u + 1) * s]``.
        """
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        side = self.context * ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2
        s = side / self.input_size
        z = torch.zeros_like(s)
        x0 = cx - side / 2 + 0.5 * s
        y0 = cy - side / 2 + 0.5 * s
        return torch.stack([torch.stack([s, z, x0], 1), torch.stack([z, s, y0], 1)], 1)

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        """Landmarks ``(F, 68, 2)`` in image pixels (differentiable), and rendered heat-maps."""
        theta = self.crop_theta(faces.boxes.to(images.device, torch.float32))
        n = self.input_size
        crops = affine_crop(images, faces.image_index, theta, (n, n))
        x = crops / 127.5 - 1.0
        unit = self.head(self.features(x).flatten(1)).view(-1, self.scheme.num_points, 2)
        landmarks = apply_affine(theta, unit * n - 0.5)
        out = ExtractorOutput(landmarks=landmarks, extra={"crop_theta": theta, "crop_unit": unit})
        if self.render:
            m = self.heatmap_size
            out.heatmaps = render_heatmaps(unit * m - 0.5, m, self.sigma)
            out.hm_to_image = compose_affine(theta, scale_affine(n / m, n / m, theta.shape[0], theta.device))
        return out

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """The regressed coordinates themselves (already in image pixels)."""
        if output.landmarks is None:
            raise ValueError("example-regressor output without landmarks")
        return output.landmarks.float()

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, context={self.context}, heatmaps={self.render}"
