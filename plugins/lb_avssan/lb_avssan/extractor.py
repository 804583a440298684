"""The AVS-SAN extractor: SAN's crop rule, normalisation and peak decoding around :class:`ITNCPM`.

Crop (SAN's ``PreCrop`` + ``TrainScale2WH``): the face box ``[x1, y1, x2, y2]`` grows by
``expand_ratio`` (0.2) of its width / height on each side, is clipped to the image (no padding:
a face at the border gets a smaller, still non-uniformly scaled crop) and the region is resized
to 128x128 - independently in x and y, so the crop's aspect ratio is *not* kept. The original
rounds the grown box outward to whole pixels (``floor`` / ``ceil``) before cropping with PIL;
``truncate=True`` does the same, the default keeps the exact fractional box. Box coordinates are
read as pixel *edges* (PIL's crop box), so crop pixel ``u`` samples image pixel-centre coordinate
``x1 + (u + 0.5) * cw / 128 - 0.5`` (PIL's and OpenCV's resize convention); samples within
half a pixel of the image border read the edge pixel, as PIL does, never zero padding.

Input: RGB, ``/255``, mean 0.5, std 0.5, i.e. ``[-1, 1]``.

Decoding (SAN's ``find_tensor_peak_batch`` with ``radius`` = ``--argmax_size`` = 3, then
``san_eval.py``): per stage-3 map the integer argmax (row = index // W); a soft-argmax over the
``7x7`` window centred on it, where values ``<= 1e-6`` (and samples outside the map) are replaced
by machine epsilon ``2.22e-16`` so negative responses never pull the estimate; the heat-map
position becomes ``x * 8 + 3.5`` in the 128x128 crop and ``x_crop * cw / 128 + x1`` in the
image - the original maps crop coordinates back by scaling alone, without the half-pixel
terms of the resampling above (the difference is ``(cw/128 - 1) / 2`` pixels). ``hm_to_image``
is exactly this decoding map, so generic code that places heat-map points in the image agrees
with :meth:`AVSSANExtractor.decode`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lb_avssan.checkpoint import SANConfig
from lb_avssan.model import ITNCPM, NUM_POINTS
from lbcore import ExtractorOutput, Faces
from lbcore.extractor import HeatmapExtractor, affine_crop, apply_affine
from lbcore.schemes import WFLW98

__all__ = ["AVSSANExtractor", "san_crop_boxes", "crop_without_padding", "san_peak_soft_argmax", "MACHINE_EPS"]

MACHINE_EPS = float(np.finfo(float).eps)
"""What SAN floors the soft-argmax window to (float64 epsilon, 2.22e-16)."""


def san_crop_boxes(
    boxes: torch.Tensor,
    image_size: tuple[int, int] | None,
    expand_ratio: float = 0.2,
    truncate: bool = False,
) -> torch.Tensor:
    """SAN's crop region for each face box.

    Args:
        boxes: ``(F, 4)`` face boxes ``x1, y1, x2, y2``.
        image_size: ``(H, W)`` of the image each box lies in; ``None`` skips the clipping.
        expand_ratio: growth on each side, as a fraction of the box's width / height.
        truncate: round outward to whole pixels like the original (``floor`` x1/y1, ``ceil``
            x2/y2).

    Returns:
        ``(F, 4)`` crop boxes (at least one pixel wide and high).
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    ew, eh = (x2 - x1) * expand_ratio, (y2 - y1) * expand_ratio
    cx1, cy1, cx2, cy2 = x1 - ew, y1 - eh, x2 + ew, y2 + eh
    if truncate:
        cx1, cy1, cx2, cy2 = cx1.floor(), cy1.floor(), cx2.ceil(), cy2.ceil()
    if image_size is not None:
        h, w = image_size
        cx1, cy1 = cx1.clamp(min=0.0), cy1.clamp(min=0.0)
        cx2, cy2 = cx2.clamp(max=float(w)), cy2.clamp(max=float(h))
    # a face entirely outside the image would give an empty crop; keep one pixel
    cx2 = torch.maximum(cx2, cx1 + 1.0)
    cy2 = torch.maximum(cy2, cy1 + 1.0)
    return torch.stack([cx1, cy1, cx2, cy2], dim=-1)


def crop_without_padding(
    images: torch.Tensor, image_index: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """:func:`lbcore.extractor.affine_crop` with PIL's border handling instead of zeros.

    A crop clipped to the image still samples up to half a pixel beyond the outermost pixel
    centres; PIL (and OpenCV) read the edge pixel there, where ``affine_crop`` would blend in
    zero padding. Padding the image by one replicated pixel (and shifting ``theta`` to match)
    gives the former; gradients still reach the original pixels.

    Shape:
        images ``(B, C, H, W)``, theta ``(F, 2, 3)`` -> ``(F, C, h, w)``.
    """
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    shifted = theta.clone()
    shifted[:, :, 2] += 1.0
    return affine_crop(padded, image_index, shifted, size)


def san_peak_soft_argmax(
    heatmaps: torch.Tensor, radius: int = 3, threshold: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAN's peak finder: argmax, then soft-argmax over the ``(2r+1)^2`` window around it.

    The window is read at whole-pixel offsets (the original's ``grid_sample`` lands exactly on
    them); positions outside the map count as 0 and, like every value ``<= threshold``, are
    floored to :data:`MACHINE_EPS`.

    Args:
        heatmaps: ``(F, K, h, w)``.

    Returns:
        ``(coords, scores)``: ``(F, K, 2)`` sub-pixel ``(x, y)`` in heat-map pixels, and the
        ``(F, K)`` peak values.
    """
    f, k, h, w = heatmaps.shape
    score, index = heatmaps.reshape(f, k, h * w).max(dim=-1)
    ix = index % w
    iy = torch.div(index, w, rounding_mode="floor")
    r = int(radius)
    padded = F.pad(heatmaps, (r, r, r, r), value=0.0)
    pw = w + 2 * r
    offsets = torch.arange(-r, r + 1, device=heatmaps.device)
    # window (F, K, 2r+1 rows, 2r+1 cols) around the peak, in padded coordinates
    rows = (iy + r)[..., None] + offsets  # (F, K, S)
    cols = (ix + r)[..., None] + offsets
    flat_index = (rows[..., :, None] * pw + cols[..., None, :]).reshape(f, k, -1)
    window = padded.reshape(f, k, -1).gather(-1, flat_index).reshape(f, k, 2 * r + 1, 2 * r + 1)
    window = torch.where(window > threshold, window, torch.full_like(window, MACHINE_EPS))
    total = window.sum(dim=(-2, -1))
    off = offsets.to(window.dtype)
    dx = (window * off[None, None, None, :]).sum(dim=(-2, -1)) / total
    dy = (window * off[None, None, :, None]).sum(dim=(-2, -1)) / total
    coords = torch.stack([ix.to(window.dtype) + dx, iy.to(window.dtype) + dy], dim=-1)
    return coords, score


class AVSSANExtractor(HeatmapExtractor):
    """AVS-SAN (Qian et al., ICCV 2019): SAN's ITN-CPM trained on style-augmented WFLW.

    Args:
        net: the network; a randomly initialised full-width one when ``None``.
        include_background: return stage 3's background map as a 99th heat-map channel
            (the default returns the 98 landmark maps Eq. 1 compares).
        truncate: round the crop box to whole pixels as the original (see the module doc).
        config: evaluation settings (from the checkpoint's ``args`` when loaded from one).
        width_div: channel divisor for the network built when ``net`` is ``None``.

    ``forward`` returns stage 3's maps ``(F, 98[+1], 16, 16)``; ``extra`` holds all four stage
    outputs (``stages``), the background map, the crop boxes and the resampling ``crop_theta``.
    """

    scheme = WFLW98

    def __init__(
        self,
        net: ITNCPM | None = None,
        *,
        include_background: bool = False,
        truncate: bool = False,
        config: SANConfig | None = None,
        width_div: int = 1,
    ) -> None:
        super().__init__()
        config = config or SANConfig()
        self.net = net if net is not None else ITNCPM(width_div=width_div)
        self.include_background = include_background
        self.truncate = truncate
        self.expand_ratio = config.expand_ratio
        self.softargmax_radius = config.softargmax_radius
        self.input_size = config.crop_size

    # -- geometry ---------------------------------------------------------------------
    def crop_boxes(self, boxes: torch.Tensor, image_size: tuple[int, int] | None) -> torch.Tensor:
        """``(F, 4)`` face boxes -> ``(F, 4)`` crop regions (grown, rounded if asked, clipped)."""
        return san_crop_boxes(boxes, image_size, self.expand_ratio, self.truncate)

    def theta_from_crop_boxes(self, crop_boxes: torch.Tensor) -> torch.Tensor:
        """Resampling map crop pixel -> image pixel for a box resized to ``input_size``."""
        h, w = self.input_size
        cx1, cy1, cx2, cy2 = crop_boxes.unbind(-1)
        sx, sy = (cx2 - cx1) / w, (cy2 - cy1) / h
        zero = torch.zeros_like(sx)
        row0 = torch.stack([sx, zero, cx1 + 0.5 * sx - 0.5], dim=-1)
        row1 = torch.stack([zero, sy, cy1 + 0.5 * sy - 0.5], dim=-1)
        return torch.stack([row0, row1], dim=1)

    def crop_theta(self, boxes: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(F, 4)`` boxes -> ``(F, 2, 3)``; clipping needs ``image_size`` (``forward`` gives it)."""
        return self.theta_from_crop_boxes(self.crop_boxes(boxes, image_size))

    def hm_theta_from_crop_boxes(self, crop_boxes: torch.Tensor, hm_size: tuple[int, int]) -> torch.Tensor:
        """The original's decoding map, heat-map pixel -> image pixel (see the module doc)."""
        h, w = self.input_size
        stride_x, stride_y = w / hm_size[1], h / hm_size[0]
        cx1, cy1, cx2, cy2 = crop_boxes.unbind(-1)
        sx, sy = (cx2 - cx1) / w, (cy2 - cy1) / h
        zero = torch.zeros_like(sx)
        # x_crop = stride * x + stride / 2 - 0.5 ; x_img = x_crop * sx + cx1
        row0 = torch.stack([stride_x * sx, zero, (stride_x / 2 - 0.5) * sx + cx1], dim=-1)
        row1 = torch.stack([zero, stride_y * sy, (stride_y / 2 - 0.5) * sy + cy1], dim=-1)
        return torch.stack([row0, row1], dim=1)

    # -- network ----------------------------------------------------------------------
    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """``[0, 255]`` RGB -> ``(x / 255 - 0.5) / 0.5``."""
        return crops / 127.5 - 1.0

    def forward_crops(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        stages = self.net(x)
        last = stages[-1]
        heatmaps = last if self.include_background else last[:, :NUM_POINTS]
        return heatmaps, {"stages": stages, "background": last[:, NUM_POINTS:]}

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        """Crop every face from its full-resolution image (differentiably) and run the network.

        Shape:
            images ``(B, 3, H, W)`` in ``[0, 255]``; ``F`` faces -> heat-maps
            ``(F, 98[+1], 16, 16)``, ``hm_to_image`` ``(F, 2, 3)``.
        """
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        boxes = faces.boxes.to(images.device, torch.float32)
        crop_boxes = self.crop_boxes(boxes, image_size)
        theta = self.theta_from_crop_boxes(crop_boxes)
        crops = crop_without_padding(images, faces.image_index, theta, self.input_size)
        heatmaps, extra = self.forward_crops(self.normalise(crops))
        hm_theta = self.hm_theta_from_crop_boxes(crop_boxes, (heatmaps.shape[-2], heatmaps.shape[-1]))
        extra.update(crop_theta=theta, crop_box=crop_boxes)
        return ExtractorOutput(heatmaps=heatmaps, hm_to_image=hm_theta, extra=extra)

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """Landmarks ``(F, 98, 2)`` in image pixels, decoded as SAN does (module doc)."""
        if output.heatmaps is None or output.hm_to_image is None:
            raise ValueError("AVS-SAN decoding needs heat-maps and hm_to_image")
        coords, _ = san_peak_soft_argmax(output.heatmaps[:, :NUM_POINTS], self.softargmax_radius)
        return apply_affine(output.hm_to_image.to(coords.dtype), coords)
