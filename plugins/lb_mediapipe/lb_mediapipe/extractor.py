"""MediaPipe Face Mesh as a differentiable extractor.

Pipeline per face (each step differentiable with respect to the full image):

1. Crop rule: a square centred on the face box, side ``scale`` times the box's longer side
   (MediaPipe's face-landmark ROI is the detection box enlarged 1.5 times and made square:
   ``RectTransformationCalculator`` with ``scale_x = scale_y = 1.5, square_long = true``). The
   ROI is not rotated: MediaPipe turns it so the eyes are level, using detector keypoints that
   a box does not carry; the mesh tolerates the small roll of upright faces.
2. :func:`lbcore.extractor.affine_crop` resamples that square to 192 x 192 (bilinear).
3. Normalisation as MediaPipe's ``ImageToTensorCalculator`` for this model: RGB scaled to
   ``[0, 1]``.
4. The network (:class:`~lb_mediapipe.tflite_torch.TFLiteNet` built from ``face_landmark.tflite``)
   regresses 468 ``(x, y, z)`` points in input pixels (pixel edges at integers, so the crop
   pixel centre ``u`` is at ``x = u + 0.5``) and a face-presence logit.
5. The 468 points are mapped back to the image and reduced to iBUG-68
   (:mod:`lb_mediapipe.mapping`): ``landmarks`` is ``(F, 68, 2)``, scheme iBUG-68, so NME is
   normalised by the iBUG outer eye corners. All 468 points stay in ``extra["mesh"]``.

Eq. 1 needs heat-maps; a regression network has none, so ``heatmaps`` holds isotropic Gaussians
rendered (differentiably) at the 68 points on a 48 x 48 grid over the crop, ``sigma`` crop
pixels wide. The cosine of two such maps falls with the distance of their centres, so Eq. 1
pushes the regressed points apart; ``landmarks`` carries the same gradient for the
landmark-displacement loss.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lb_mediapipe.mapping import MESH_POINTS, mesh_to_ibug68
from lb_mediapipe.tflite_torch import TFLiteNet
from lbcore.extractor import Extractor, affine_crop, apply_affine, compose_affine, scale_affine
from lbcore.schemes import IBUG68
from lbcore.types import ExtractorOutput, Faces

__all__ = ["FaceMeshExtractor", "load_face_mesh", "INPUT_SIZE", "ROI_SCALE"]

INPUT_SIZE = 192
ROI_SCALE = 1.5  # MediaPipe's face-landmark ROI: the detection box enlarged 1.5x, square
HEATMAP_SIZE = 48


def load_face_mesh(path: str | os.PathLike[str]) -> TFLiteNet:
    """The face mesh network of ``path``; a one-line WeightsError if it is not a face mesh."""
    return TFLiteNet(path, input_shape=(1, INPUT_SIZE, INPUT_SIZE, 3), output_sizes=(MESH_POINTS * 3, 1),
                     what="a MediaPipe face mesh model (468-point face_landmark.tflite)")


class FaceMeshExtractor(Extractor):
    """MediaPipe Face Mesh, 468 points reduced to iBUG-68 (see the module docstring).

    Args:
        net: the converted network, or ``None`` for a network-less shell (tests).
        scale: ROI side over the face box's longer side.
        sigma: width of the rendered heat-map Gaussians, in crop pixels.
    """

    scheme = IBUG68
    input_size = (INPUT_SIZE, INPUT_SIZE)
    shares_crops = True  # (the replay's convolutions are batch-invariant on the CPU: tflite_torch._conv2d)

    def __init__(self, net: TFLiteNet, scale: float = ROI_SCALE, sigma: float = 12.0) -> None:
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

    def forward_crops(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F, 3, 192, 192)`` crops in ``[0, 255]`` -> mesh ``(F, 468, 3)`` in input pixels
        (edges at integers) and the face-presence logit ``(F,)``."""
        mesh, flag = self.net(crops / 255.0)
        return mesh.reshape(-1, MESH_POINTS, 3), flag.reshape(-1)

    def render(self, points: torch.Tensor) -> torch.Tensor:
        """Gaussians at ``(F, K, 2)`` crop-pixel points on the heat-map grid: ``(F, K, 48, 48)``."""
        stride = INPUT_SIZE / HEATMAP_SIZE
        hm = (points + 0.5) / stride - 0.5  # crop pixel centres -> heat-map pixel centres
        grid = torch.arange(HEATMAP_SIZE, device=points.device, dtype=points.dtype)
        s2 = 2.0 * (self.sigma / stride) ** 2
        gx = torch.exp(-(grid[None, None, :] - hm[..., 0:1]) ** 2 / s2)
        gy = torch.exp(-(grid[None, None, :] - hm[..., 1:2]) ** 2 / s2)
        return gy[..., :, None] * gx[..., None, :]

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        theta = self.crop_theta(faces.boxes.to(images.device, torch.float32))
        crops = affine_crop(images, faces.image_index, theta, self.input_size)
        mesh, flag = self.forward_crops(crops)
        mesh = mesh.float()
        crop_pts = mesh[..., :2] - 0.5  # edge coordinates -> pixel-centre coordinates
        ibug_crop = mesh_to_ibug68(crop_pts)
        assert isinstance(ibug_crop, torch.Tensor)
        stride = INPUT_SIZE / HEATMAP_SIZE
        hm_theta = compose_affine(theta, scale_affine(stride, stride, theta.shape[0], theta.device))
        extra: dict[str, Any] = {
            "crop_theta": theta,
            "mesh": apply_affine(theta, crop_pts),
            "mesh_z": mesh[..., 2] * theta[:, 0, 0:1],
            "face_score": torch.sigmoid(flag.float()),
        }
        return ExtractorOutput(heatmaps=self.render(ibug_crop), landmarks=apply_affine(theta, ibug_crop),
                               hm_to_image=hm_theta, extra=extra)

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """The regressed iBUG-68 points ``(F, 68, 2)`` in image pixels (not the rendered maps' peaks)."""
        if output.landmarks is None:
            raise ValueError("MediaPipe face mesh output without landmarks")
        return output.landmarks
