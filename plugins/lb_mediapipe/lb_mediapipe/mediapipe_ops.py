"""MediaPipe's custom TFLite operators of the Attention Mesh, written in torch (differentiable).

The attention face mesh (``face_landmark_with_attention.tflite``) crops its own feature map around
the lips and each eye, with three operators that MediaPipe registers next to TFLite's built-ins
(``mediapipe/util/tflite/operations/``). Their semantics, as implemented here (version 2 of each,
the one a rank-3 landmark tensor selects):

``Landmarks2TransformMatrix``
    From ``(N, K, 3)`` landmarks: the rotation ``r = target - atan2(y_R - y_L, x_R - x_L)`` of the
    line between two landmarks; the subset's ``(x, y)`` points are rotated by ``r`` about the
    origin, their axis-aligned box (width ``w``, height ``h``, centre rotated back by ``-r``) gives
    the crop. The ``4 x 4`` matrix maps output pixels to input coordinates:
    ``shift(centre) @ rot(-r) @ scale(scale_x * w / out_w, scale_y * h / out_h) @ shift(-out_w / 2, -out_h / 2)``.
``TransformTensorBilinear``
    Samples an NHWC tensor at ``M @ (x + 0.5, y + 0.5, 0, 1) - 0.5`` for every output pixel
    ``(x, y)`` (pixel centres; only the first two rows of ``M`` matter), bilinearly, with value
    0 for points outside ``[0, W - 1] x [0, H - 1]``.
``TransformLandmarks``
    ``(N, K, 2)`` points -> ``M[:2, :2] @ p + M[:2, 3]`` (z, if present, is copied).

Everything is batched over ``N`` and keeps autograd: the sampling positions depend on the
landmarks, so gradients flow through both the sampled features and the crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["landmarks_to_transform_matrix", "transform_tensor_bilinear", "transform_landmarks"]


def _rot(r: torch.Tensor) -> torch.Tensor:
    """``(N,)`` angles -> ``(N, 2, 2)`` rotation matrices ``[[cos, -sin], [sin, cos]]``."""
    c, s = torch.cos(r), torch.sin(r)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def landmarks_to_transform_matrix(landmarks: torch.Tensor, *, left: int, right: int, subset: Sequence[int],
                                  out_w: int, out_h: int, scale_x: float, scale_y: float,
                                  target_rotation: float = 0.0) -> torch.Tensor:
    """``(N, K, >=2)`` landmarks -> ``(N, 4, 4)`` crop matrices (output pixel -> input coordinate)."""
    xy = landmarks[..., :2]
    d = xy[:, right] - xy[:, left]
    r = target_rotation - torch.atan2(d[:, 1], d[:, 0])
    idx = torch.as_tensor(list(subset), device=xy.device, dtype=torch.long)
    pts = xy.index_select(1, idx)  # (N, S, 2)
    rot = _rot(r)
    rotated = pts @ rot.transpose(1, 2)
    hi, lo = rotated.amax(1), rotated.amin(1)
    size = hi - lo  # (N, 2): width, height in the rotated frame
    back = _rot(-r)
    centre = (back @ (0.5 * (hi + lo))[..., None])[..., 0]
    sx = scale_x * size[:, 0] / out_w
    sy = scale_y * size[:, 1] / out_h
    # shift(c) @ rot(-r) @ scale(sx, sy) @ shift(-out_w/2, -out_h/2), rows 0-1 of the 2-D part
    a = back * torch.stack([sx, sy], -1)[:, None, :]  # rot(-r) @ diag(sx, sy)
    t = centre + a @ torch.tensor([-out_w / 2.0, -out_h / 2.0], device=xy.device, dtype=xy.dtype)
    zero, one = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([
        torch.stack([a[:, 0, 0], a[:, 0, 1], zero, t[:, 0]], -1),
        torch.stack([a[:, 1, 0], a[:, 1, 1], zero, t[:, 1]], -1),
        torch.stack([zero, zero, one, zero], -1),
        torch.stack([zero, zero, zero, one], -1),
    ], 1)


def transform_tensor_bilinear(x: torch.Tensor, matrix: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Sample ``(N, C, H, W)`` ``x`` (NCHW copy of an NHWC tensor) on the ``out_h x out_w`` grid that
    ``matrix`` ``(N, 4, 4)`` maps into it (see the module docstring): ``(N, C, out_h, out_w)``."""
    n, _, h, w = x.shape
    a = matrix[:, :2, :2]
    # the half-pixel correction: t = M @ (p + 0.5) - 0.5 for the first two coordinates
    t = matrix[:, :2, 3] + 0.5 * a.sum(-1) - 0.5
    ys, xs = torch.meshgrid(torch.arange(out_h, device=x.device, dtype=x.dtype),
                            torch.arange(out_w, device=x.device, dtype=x.dtype), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(1, -1, 2)  # (1, P, 2) as (x, y)
    tc = grid @ a.transpose(1, 2) + t[:, None, :]  # (N, P, 2) input coordinates
    inside = ((tc[..., 0] >= 0) & (tc[..., 0] <= w - 1) & (tc[..., 1] >= 0) & (tc[..., 1] <= h - 1)).to(x.dtype)
    # align_corners=True: -1 and 1 are the centres of the first and last pixel, as tc's 0 and W-1
    norm = torch.stack([tc[..., 0] / max(w - 1, 1) * 2 - 1, tc[..., 1] / max(h - 1, 1) * 2 - 1], -1)
    y = F.grid_sample(x, norm.reshape(n, out_h, out_w, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
    return y * inside.reshape(n, 1, out_h, out_w)


def transform_landmarks(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``(N, K, 2|3)`` points mapped by ``matrix`` ``(N, 4, 4)``: x, y transformed, z copied."""
    xy = points[..., :2] @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 3]
    return torch.cat([xy, points[..., 2:]], -1) if points.shape[-1] > 2 else xy
