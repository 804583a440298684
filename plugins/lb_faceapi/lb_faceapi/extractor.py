"""face-api.js's 68-point landmark networks as a differentiable extractor.

Pipeline per face (each step differentiable with respect to the full image):

1. Crop rule: a square centred on the face box, side ``scale`` times the box's longer side.
   face-api.js crops its own detector's box (SSD MobileNet or the tiny detector; looser than the
   brow-to-chin boxes of the project's detectors), pads it to a square with zeros, centred, and
   resizes it to 112 x 112; here the square is cut from the image itself (no zero bands) at the
   scale measured to fit best (README: NME on the annotated faces per scale).
2. :func:`lbcore.extractor.affine_crop` resamples the square to 112 x 112 (bilinear, no
   anti-aliasing, like TensorFlow.js's ``resizeBilinear``).
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


class FaceApiExtractor(Extractor):
    """face-api.js's landmark network on a square crop of the face box (module docstring).

    Args:
        net: the loaded network.
        scale: crop side over the face box's longer side.
        sigma: width of the rendered heat-map Gaussians, in crop pixels (of 112).
    """

    scheme = IBUG68
    input_size = (INPUT_SIZE, INPUT_SIZE)

    def __init__(self, net: FaceLandmarkNet, scale: float, sigma: float = 7.0) -> None:
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.sigma = float(sigma)

    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(F, 4)`` boxes -> ``(F, 2, 3)`` maps from crop pixel centres to image pixels."""
        cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
        cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
        side = self.scale * torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp_min(1.0)
        step = side / INPUT_SIZE
        zero = torch.zeros_like(step)
        return torch.stack([
            torch.stack([step, zero, cx - 0.5 * side + 0.5 * step], dim=1),
            torch.stack([zero, step, cy - 0.5 * side + 0.5 * step], dim=1),
        ], dim=1)

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        theta = self.crop_theta(faces.boxes.to(images.device, torch.float32))
        crops = affine_crop(images, faces.image_index, theta, self.input_size)
        frac = self.net(crops).float()
        # fractions of the square (edges at 0 and 1) -> crop pixel centres
        crop_pts = frac * INPUT_SIZE - 0.5
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
