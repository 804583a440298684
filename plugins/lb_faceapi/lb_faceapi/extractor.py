"""face-api.js's 68-point landmark networks as a differentiable extractor.

Pipeline per face (each step differentiable with respect to the full image):

1. Crop rule (``crop="faceapi"``, the default): face-api.js crops its own detector's box (SSD
   MobileNet v1), pads it to a square with zeros, centred, and resizes the square to 112 x 112.
   Its box is not the project's: measured on the sample photos, it is 0.89 times as wide, 1.33
   times as tall and 0.10 of the height higher (:data:`SSD_W`, :data:`SSD_H`, :data:`SSD_DY`).
   So the square here is that box's (times ``scale``, default 1), and the columns outside the
   box's width are zero, as face-api.js's padding. ``crop="square"``: a square of ``scale`` times
   the box's longer side, centred on the box, image content everywhere (the first version).
2. :func:`lbcore.extractor.affine_crop` resamples the square to 112 x 112 (bilinear, no
   anti-aliasing, and with ``crop="faceapi"`` on TensorFlow.js's ``resizeBilinear`` grid: crop pixel
   ``u`` reads the square's pixel ``u * side / 112``, not the pixel-centre-aligned position).
3. The network (:class:`~lb_faceapi.net.FaceLandmarkNet`) regresses 68 ``(x, y)`` fractions of
   the square (iBUG-68 order), mapped back to the image: ``landmarks`` ``(F, 68, 2)``.

Eq. 1 needs heat-maps; a regression network has none, so ``heatmaps`` holds Gaussians rendered at
the 68 points on a 28 x 28 grid over the crop (``sigma`` crop pixels wide), as for the other
coordinate regressors (MediaPipe, MTCNN's ONet): the cosine of two such maps falls with the
distance of their centres, so Eq. 1 pushes the regressed points away.
"""

from __future__ import annotations

import torch

from lb_faceapi.net import INPUT_SIZE, FaceLandmarkNet
from lbcore.extractor import (
    Extractor,
    affine_crop,
    apply_affine,
    compose_affine,
    render_gaussians,
    scale_affine,
)
from lbcore.schemes import IBUG68
from lbcore.types import ExtractorOutput, Faces

__all__ = ["FaceApiExtractor", "HEATMAP_SIZE"]

HEATMAP_SIZE = 28
SSD_W, SSD_H, SSD_DY = 0.89, 1.33, -0.10
"""face-api.js's SSD MobileNet box against the project's default detector's box (medians over the
44 faces both found in the 13 sample photos: width 0.893, height 1.331, centre 0.102 of the height
higher; ``benchmarks/faceapi_pipeline.py``'s detections)."""


class FaceApiExtractor(Extractor):
    """face-api.js's landmark network on a square crop of the face box (module docstring).

    Args:
        net: the loaded network.
        scale: the square's side over the longer side of its box (face-api.js's estimated box for
            ``crop="faceapi"``, the given box for ``crop="square"``).
        sigma: width of the rendered heat-map Gaussians, in crop pixels (of 112).
        crop: ``faceapi`` or ``square`` (module docstring).
    """

    scheme = IBUG68
    input_size = (INPUT_SIZE, INPUT_SIZE)

    def __init__(self, net: FaceLandmarkNet, scale: float, sigma: float = 7.0, crop: str = "faceapi") -> None:
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.sigma = float(sigma)
        self.crop = crop

    def _square(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centre, side of the network's square and the width of its image band, per face."""
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
        cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
        if self.crop == "faceapi":
            # face-api.js's own detector box, as measured against the project's (module docstring):
            # SSD_W x SSD_H of the box, moved up by SSD_DY of its height; padded to a square
            bw, bh = SSD_W * w, SSD_H * h
            cy = cy + SSD_DY * h
            side = self.scale * torch.maximum(bw, bh).clamp_min(1.0)
            # (the box is taller than wide unless the face box is 1.5 times wider than tall: then
            # face-api.js pads rows, not columns, and here nothing is zeroed)
            return cx, cy, side, torch.minimum(bw / side, torch.ones_like(bw))
        side = self.scale * torch.maximum(w, h).clamp_min(1.0)
        return cx, cy, side, torch.ones_like(side)

    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(F, 4)`` boxes -> ``(F, 2, 3)`` maps from crop pixel centres to image pixels.

        ``crop="faceapi"`` samples as TensorFlow.js's ``resizeBilinear`` (no half-pixel centres:
        crop pixel ``u`` reads image position ``x0 + u * step``)."""
        cx, cy, side, _band = self._square(boxes)
        step = side / INPUT_SIZE
        zero = torch.zeros_like(step)
        # the square's edge; its first pixel's centre half a pixel inside
        offset = 0.5 if self.crop == "faceapi" else 0.5 * step
        return torch.stack([
            torch.stack([step, zero, cx - 0.5 * side + offset], dim=1),
            torch.stack([zero, step, cy - 0.5 * side + offset], dim=1),
        ], dim=1)

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        boxes = faces.boxes.to(images.device, torch.float32)
        theta = self.crop_theta(boxes)
        crops = affine_crop(images, faces.image_index, theta, self.input_size)
        band = self._square(boxes)[3]
        if bool((band < 1).any()):  # zeros beside the detector box, as face-api.js's padToSquare
            u = (torch.arange(INPUT_SIZE, device=crops.device, dtype=crops.dtype) + 0.5) / INPUT_SIZE - 0.5
            inside = (u.abs()[None, :] <= 0.5 * band[:, None]).to(crops.dtype)
            crops = crops * inside[:, None, None, :]
        frac = self.net(crops).float()
        # fractions of the square -> crop pixels: face-api.js reads them from the first pixel's
        # centre (as its resize samples); the square rule from the square's edge
        crop_pts = frac * INPUT_SIZE - (0.0 if self.crop == "faceapi" else 0.5)
        stride = INPUT_SIZE / HEATMAP_SIZE
        cells = (crop_pts + 0.5) / stride - 0.5
        hm_theta = compose_affine(theta, scale_affine(stride, stride, theta.shape[0], theta.device))
        return ExtractorOutput(heatmaps=render_gaussians(cells, HEATMAP_SIZE, self.sigma / stride),
                               landmarks=apply_affine(theta, crop_pts), hm_to_image=hm_theta,
                               extra={"crop_theta": theta})

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """The regressed iBUG-68 points ``(F, 68, 2)`` in image pixels."""
        if output.landmarks is None:
            raise ValueError("face-api.js landmark output without landmarks")
        return output.landmarks
