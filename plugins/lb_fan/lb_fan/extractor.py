"""FAN as an lbcore heat-map extractor: face-alignment's crop, normalisation and decoding.

The quirks of the original code live here, each pinned by a test:

* **Crop** (face-alignment ``api.py`` + ``utils.crop``): from a face box, centre
  ``((x1+x2)/2, (y1+y2)/2 - 0.12 (y2-y1))``, scale ``s = (w+h)/195`` and side ``h = 200 s``. The
  original cuts the integer window ``[ul, br)`` with ``ul = trunc(c - h/2 + h/256)`` and
  ``br = trunc(c + h/2)`` (its 1-based ``transform`` of the corners ``1`` and ``256``, truncated
  toward zero), pads with zeros outside the image and resizes the window to 256x256 with
  OpenCV's bilinear ``resize``. :meth:`FANExtractor.crop_theta` is that same map, so the
  differentiable :func:`lbcore.extractor.affine_crop` samples exactly the pixels the original
  network saw.
* **Normalisation**: RGB / 255 (face-alignment); ``normalise="symmetric"`` gives pyhowfar's
  mean 0.5 / std 0.5.
* **Decoding** (``get_preds_fromhm``): argmax of each 64x64 map; when the peak is not on the
  border (in x *and* y) it moves 0.25 toward the larger neighbour along each axis; then the
  original's 1-based index ``-0.5`` goes through the inverse of ``transform`` at resolution 64:
  ``x = (i + 1 + d - 0.5) h/64 + c - h/2`` for the 0-based index ``i``. The original truncates
  the result to integers; here that is ``truncate=True`` and the default stays in float.

The original's decode map and the true geometry of its crop (``hm_to_image``) disagree by up to
about ``h/256 + 0.5`` image pixels (the original's own 1-based/0-based mix): reported landmarks use
the original's map, generic code (soft-argmax losses) uses ``hm_to_image``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lb_fan.model import FAN
from lbcore import ExtractorOutput, Faces
from lbcore.errors import SpecError
from lbcore.extractor import HeatmapExtractor, apply_affine, argmax_2d
from lbcore.schemes import scheme_for
from lbcore.weights import extract_state_dict, load_checkpoint, load_state_dict_strict

__all__ = [
    "FANExtractor",
    "face_alignment_center_scale",
    "face_alignment_crop_theta",
    "face_alignment_decode_theta",
    "decode_heatmaps",
    "REFERENCE_SCALE",
    "INPUT_RESOLUTION",
]

REFERENCE_SCALE = 195.0
"""face-alignment's ``reference_scale``: ``scale = (w + h) / 195``."""
INPUT_RESOLUTION = 256
"""Side of the network input crop."""

Normalise = Literal["unit", "symmetric"]


def face_alignment_center_scale(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """face-alignment's centre and scale of face boxes.

    Args:
        boxes: ``(F, 4)`` ``x1, y1, x2, y2``.

    Returns:
        ``center`` ``(F, 2)`` and ``scale`` ``(F,)`` (crop side is ``200 * scale``), float64.
    """
    b = boxes.to(torch.float64)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    # The centre moves up by 12% of the box height: detector boxes sit low on the face.
    center = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2 - 0.12 * h], dim=1)
    return center, (w + h) / REFERENCE_SCALE


def face_alignment_crop_theta(boxes: torch.Tensor, resolution: int = INPUT_RESOLUTION) -> torch.Tensor:
    """The original ``crop()`` as a map from crop pixels to image pixels.

    The original copies the image window ``[ul, br)`` (integer corners, zero padding) into an
    ``N x N`` array with ``N = br - ul`` (per axis) and resizes it to ``resolution`` with
    OpenCV's half-pixel-centre bilinear rule, so crop pixel ``u`` samples window coordinate
    ``(u + 0.5) N / resolution - 0.5``, i.e. image coordinate ``ul`` plus that.

    Args:
        boxes: ``(F, 4)`` face boxes.
        resolution: crop side (256).

    Returns:
        ``(F, 2, 3)`` float32 affine maps (pixel centres at integers).
    """
    center, scale = face_alignment_center_scale(boxes)
    side = (200.0 * scale)[:, None]
    # transform([1, 1], invert) and transform([res, res], invert), then .int() (toward zero).
    ul = torch.trunc(side / resolution + center - side / 2)
    br = torch.trunc(center + side / 2)
    n = (br - ul).clamp(min=1.0)  # a degenerate box still gives a valid (1-pixel) window
    s = n / resolution
    off = ul + 0.5 * s - 0.5
    zero = torch.zeros_like(s[:, 0])
    theta = torch.stack(
        [torch.stack([s[:, 0], zero, off[:, 0]], 1), torch.stack([zero, s[:, 1], off[:, 1]], 1)], 1
    )
    return theta.to(torch.float32)


def face_alignment_decode_theta(boxes: torch.Tensor, hm_size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """The original's heat-map -> image map used by ``get_preds_fromhm``, for 0-based indices.

    ``x = (i + 1 - 0.5) * h / R + c - h / 2`` with ``R`` the heat-map resolution (the original
    passes the map height for both axes) and ``h = 200 * scale``.

    Returns:
        ``(F, 2, 3)`` float64 affine maps applied to ``argmax + quarter-pixel shift``.
    """
    center, scale = face_alignment_center_scale(boxes)
    step = 200.0 * scale / hm_size[0]
    off = center + (0.5 * step - 100.0 * scale)[:, None]
    zero = torch.zeros_like(step)
    return torch.stack([torch.stack([step, zero, off[:, 0]], 1), torch.stack([zero, step, off[:, 1]], 1)], 1)


def _quarter_pixel_shift(heatmaps: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """``get_preds_fromhm``'s refinement: +-0.25 toward the larger neighbour, per axis, only
    when the peak is off the border in both x and y; no shift where neighbours are equal."""
    f, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(f, k, h * w)
    px = peaks[..., 0].long()
    py = peaks[..., 1].long()
    interior = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    # Clamped neighbour indices stay valid on the border; the shift is masked there anyway.
    xl, xr = (px - 1).clamp(0, w - 1), (px + 1).clamp(0, w - 1)
    yu, yd = (py - 1).clamp(0, h - 1), (py + 1).clamp(0, h - 1)

    def at(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (y * w + x).unsqueeze(-1)).squeeze(-1)

    dx = torch.sign(at(xr, py) - at(xl, py))
    dy = torch.sign(at(px, yd) - at(px, yu))
    shift = torch.stack([dx, dy], dim=-1).to(torch.float64) * 0.25
    return shift * interior.unsqueeze(-1).to(shift.dtype)


def decode_heatmaps(heatmaps: torch.Tensor, decode_theta: torch.Tensor, truncate: bool = False) -> torch.Tensor:
    """face-alignment's ``get_preds_fromhm`` on a batch, in image coordinates.

    Args:
        heatmaps: ``(F, K, h, w)`` heat-maps.
        decode_theta: ``(F, 2, 3)`` heat-map index -> image map
            (:func:`face_alignment_decode_theta`).
        truncate: truncate toward zero like the original's ``astype(int32)``.

    Returns:
        ``(F, K, 2)`` float32 landmarks ``(x, y)``.
    """
    hm = heatmaps.detach()
    peaks = argmax_2d(hm)
    peaks = peaks.to(torch.float64) + _quarter_pixel_shift(hm, peaks)
    # float64: with truncate=True a float32 rounding must not move a value across an integer.
    pts = apply_affine(decode_theta.to(hm.device, torch.float64), peaks)
    if truncate:
        pts = torch.trunc(pts)
    return pts.to(torch.float32)


class FANExtractor(HeatmapExtractor):
    """FAN with face-alignment's pre- and post-processing (see the module docstring).

    Args:
        num_modules: stacked hourglasses.
        num_landmarks: 98 (WFLW scheme) or 68 (iBUG scheme); other counts get a generic scheme.
        width: hourglass feature width (256 for the published networks).
        all_stacks: also return every stack's heat-maps as ``extra["stacks"]``, a tensor
            ``(S, F, K, 64, 64)`` (for losses on the intermediate supervision). ``heatmaps``
            is always the last stack, the one the original decodes.
        truncate: decode to integers like the original.
        normalise: ``"unit"`` (RGB / 255, face-alignment) or ``"symmetric"`` (mean 0.5 /
            std 0.5, pyhowfar).
        resolution: side of the network's input crop (256 for every published FAN; the
            project's demonstration model uses 128, giving 32x32 heat-maps). The crop rule is
            the same, only sampled more coarsely.

    The network is ``self.net`` (a :class:`~lb_fan.model.FAN`); checkpoints load into it.
    """

    input_size = (INPUT_RESOLUTION, INPUT_RESOLUTION)

    def __init__(
        self,
        num_modules: int = 1,
        num_landmarks: int = 98,
        width: int = 256,
        all_stacks: bool = False,
        truncate: bool = False,
        normalise: Normalise = "unit",
        resolution: int = INPUT_RESOLUTION,
    ) -> None:
        super().__init__()
        if resolution < 64 or resolution % 16:
            raise SpecError(f"fan: resolution={resolution} must be a multiple of 16, at least 64")
        self.input_size = (resolution, resolution)
        if normalise not in ("unit", "symmetric"):
            raise SpecError(f"fan: normalise={normalise!r} is not one of unit, symmetric")
        self.scheme = scheme_for(num_landmarks)
        self.net = FAN(num_modules=num_modules, num_landmarks=num_landmarks, width=width)
        self.all_stacks = all_stacks
        self.truncate = truncate
        self.normalise_mode: Normalise = normalise

    # -- the HeatmapExtractor template ------------------------------------------------------
    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        return face_alignment_crop_theta(boxes, self.input_size[0])

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops / 255.0
        if self.normalise_mode == "symmetric":
            x = (x - 0.5) / 0.5
        return x

    def forward_crops(self, x: torch.Tensor) -> Any:
        stacks = self.net(x)
        if self.all_stacks:
            return stacks[-1], {"stacks": torch.stack(stacks, dim=0)}
        return stacks[-1]

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        """Crop, run FAN, and keep the original's decode map in ``extra["decode_theta"]``.

        Shape:
            images ``(B, 3, H, W)`` in [0, 255]; heat-maps ``(F, K, 64, 64)``.
        """
        out = super().forward(images, faces)
        assert out.heatmaps is not None
        hm_size = (int(out.heatmaps.shape[-2]), int(out.heatmaps.shape[-1]))
        out.extra["decode_theta"] = face_alignment_decode_theta(faces.boxes.to(images.device), hm_size)
        return out

    def decode_theta_for_boxes(self, boxes: torch.Tensor, hm_size: tuple[int, int]) -> torch.Tensor:
        """The original's decode map for face boxes (the trainer places its targets through it,
        so training and decoding agree)."""
        return face_alignment_decode_theta(boxes, hm_size)

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """Landmarks ``(F, K, 2)`` by ``get_preds_fromhm`` (float, or integers with ``truncate``).

        Without ``extra["decode_theta"]`` (an output not made by :meth:`forward`) the
        geometric ``hm_to_image`` map is used instead.
        """
        if output.heatmaps is None:
            raise ValueError("FANExtractor.decode needs heat-maps")
        theta = output.extra.get("decode_theta")
        if theta is None:
            if output.hm_to_image is None:
                raise ValueError("FANExtractor.decode needs extra['decode_theta'] or hm_to_image")
            # The true geometry of the crop; within about h/256 + 0.5 px of the original's map.
            theta = output.hm_to_image
        return decode_heatmaps(output.heatmaps, theta, truncate=self.truncate)

    # -- weights ----------------------------------------------------------------------------
    def load_weights(self, path: str) -> dict[str, Any]:
        """Load a FAN checkpoint strictly into ``self.net``.

        Accepts plain state dicts, ``{'state_dict': ...}`` training checkpoints (pyhowfar's
        ``{'epoch', 'netType', 'state_dict', 'best_acc', 'optimizer'}``) and DataParallel
        ``module.`` prefixes; ``num_batches_tracked`` may be absent (pre-0.4.1 files).

        Returns:
            lbcore's load report (matched keys, parameter count).

        Raises:
            lbcore.WeightsError: unreadable file or keys/shapes that do not fit.
        """
        obj = load_checkpoint(path)
        state_dict = extract_state_dict(obj, path)
        return load_state_dict_strict(self.net, state_dict, path)
