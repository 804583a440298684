"""MediaPipe Attention Mesh (``face_landmark_with_attention.tflite``) as a differentiable extractor.

The network MediaPipe runs for ``FaceMesh(refine_landmarks=True)`` and the Face Landmarker task:
the same 192 x 192 crop and [0, 1] input as the plain mesh, but after the first 468-point estimate
it crops its own 48 x 48 feature map around the lips and each eye (MediaPipe's custom operators,
rebuilt in :mod:`lb_mediapipe.mediapipe_ops`) and regresses refined lips (80 points), eyes (71
each) and irises (5 each). MediaPipe's ``LandmarksRefinementCalculator`` then writes the refined
``(x, y)`` into the mesh (the mesh keeps its ``z``) and appends the ten iris points, whose ``z``
is the mean ``z`` of the eye's 16 contour points: 478 points. The index tables below are those of
MediaPipe's graph ``tensors_to_face_landmarks_with_attention.pbtxt`` (facts: mesh indices).

Everything after the network - crop rule, iBUG-68 reduction of the first 468 points, rendered
heat-maps - is :class:`~lb_mediapipe.extractor.FaceMeshExtractor`'s; all 478 points are in
``extra["mesh"]``.
"""

from __future__ import annotations

import os

import torch

from lb_mediapipe.extractor import INPUT_SIZE, FaceMeshExtractor
from lb_mediapipe.mapping import MESH_POINTS
from lb_mediapipe.tflite_torch import TFLiteNet

__all__ = ["AttentionMeshExtractor", "load_attention_mesh", "refine", "LIPS", "LEFT_EYE", "RIGHT_EYE",
           "LEFT_IRIS_Z", "RIGHT_IRIS_Z", "REFINED_POINTS", "OUTPUT_SIZES"]

REFINED_POINTS = 478

LIPS = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291,  # lower outer
    185, 40, 39, 37, 0, 267, 269, 270, 409,  # upper outer
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308,  # lower inner
    191, 80, 81, 82, 13, 312, 311, 310, 415,  # upper inner
    76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306,  # lower semi-outer
    184, 74, 73, 72, 11, 302, 303, 304, 408,  # upper semi-outer
    62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292,  # lower semi-inner
    183, 42, 41, 38, 12, 268, 271, 272, 407,  # upper semi-inner
)
LEFT_EYE = (
    33, 7, 163, 144, 145, 153, 154, 155, 133,  # lower contour
    246, 161, 160, 159, 158, 157, 173,  # upper contour
    130, 25, 110, 24, 23, 22, 26, 112, 243,  # halo 2, lower
    247, 30, 29, 27, 28, 56, 190,  # halo 2, upper
    226, 31, 228, 229, 230, 231, 232, 233, 244,  # halo 3, lower
    113, 225, 224, 223, 222, 221, 189,  # halo 3, upper
    35, 124, 46, 53, 52, 65,  # halo 4 / inner brow
    143, 111, 117, 118, 119, 120, 121, 128, 245,  # halo 5, lower
    156, 70, 63, 105, 66, 107, 55, 193,  # halo 5, upper / outer brow
)
RIGHT_EYE = (
    263, 249, 390, 373, 374, 380, 381, 382, 362,
    466, 388, 387, 386, 385, 384, 398,
    359, 255, 339, 254, 253, 252, 256, 341, 463,
    467, 260, 259, 257, 258, 286, 414,
    446, 261, 448, 449, 450, 451, 452, 453, 464,
    342, 445, 444, 443, 442, 441, 413,
    265, 353, 276, 283, 282, 295,
    372, 340, 346, 347, 348, 349, 350, 357, 465,
    383, 300, 293, 334, 296, 336, 285, 417,
)
# the iris points' z: the mean z of the eye contour (its first 16 refinement points)
LEFT_IRIS_Z = LEFT_EYE[:16]
RIGHT_IRIS_Z = RIGHT_EYE[:16]
# element counts of the model's outputs: mesh, lips, left eye, right eye, left iris, right iris, face flag
OUTPUT_SIZES = (MESH_POINTS * 3, len(LIPS) * 2, len(LEFT_EYE) * 2, len(RIGHT_EYE) * 2, 10, 10, 1)


def load_attention_mesh(path: str | os.PathLike[str]) -> TFLiteNet:
    """The attention mesh network of ``path``; a one-line WeightsError if it is not one."""
    return TFLiteNet(path, input_shape=(1, INPUT_SIZE, INPUT_SIZE, 3), output_sizes=OUTPUT_SIZES,
                     what="a MediaPipe attention face mesh model (face_landmark_with_attention.tflite)")


def refine(mesh: torch.Tensor, lips: torch.Tensor, left_eye: torch.Tensor, right_eye: torch.Tensor,
           left_iris: torch.Tensor, right_iris: torch.Tensor) -> torch.Tensor:
    """MediaPipe's refinement: ``(F, 468, 3)`` mesh and ``(F, K, 2)`` parts -> ``(F, 478, 3)``; differentiable."""
    # float32 throughout: under autocast the network's outputs come in mixed precisions
    out = mesh.float().clone()
    parts: tuple[tuple[torch.Tensor, tuple[int, ...]], ...] = (
        (lips, LIPS), (left_eye, LEFT_EYE), (right_eye, RIGHT_EYE))
    for part, idx in parts:
        out[:, list(idx), :2] = part.float()
    irises = []
    for part, idx in ((left_iris, LEFT_IRIS_Z), (right_iris, RIGHT_IRIS_Z)):
        z = out[:, list(idx), 2].mean(1, keepdim=True)  # (F, 1)
        irises.append(torch.cat([part.float(), z[:, :, None].expand(-1, part.shape[1], 1)], -1))
    return torch.cat([out, *irises], 1)


class AttentionMeshExtractor(FaceMeshExtractor):
    """MediaPipe Attention Mesh, first 468 of its 478 refined points reduced to iBUG-68."""

    def forward_crops(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F, 3, 192, 192)`` crops in ``[0, 255]`` -> refined mesh ``(F, 478, 3)`` in input pixels
        (edges at integers) and the face-presence logit ``(F,)``."""
        mesh, lips, leye, reye, liris, riris, flag = self.net(crops / 255.0)
        n = crops.shape[0]
        refined = refine(mesh.reshape(n, MESH_POINTS, 3), lips.reshape(n, -1, 2), leye.reshape(n, -1, 2),
                         reye.reshape(n, -1, 2), liris.reshape(n, -1, 2), riris.reshape(n, -1, 2))
        return refined, flag.reshape(-1)
