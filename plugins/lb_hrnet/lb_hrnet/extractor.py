"""The HRNet landmark extractor: the original's crop, normalisation and decoding around the network.

Geometry (HRNet-Facial-Landmark-Detection, ``lib/utils/transforms.py`` and
``lib/core/evaluation.py``), rotation-free as at test time:

* **Face box -> center and scale.** ``center`` = the box centre, ``scale = max(w, h) / 200``,
  then ``scale *= 1.25`` (the WFLW dataset's enlargement); the crop side is ``h = 200 * scale``.
* **Crop.** ``crop()`` finds the crop's corners with ``transform_pixel(..., invert=1)``, which works
  in 1-based pixels and truncates toward zero:
  ``ul = int(c - h/2 - h/256) + 1`` and ``br = int(c + h/2 - h/256) + 1`` (per axis), copies
  ``img[ul:br]`` into a zero canvas of side ``S = br - ul`` and resizes it to 256x256 (PIL
  bilinear: crop pixel ``u`` samples canvas coordinate ``(u + 0.5) * S / 256 - 0.5``). So crop
  pixel ``u`` sees image pixel ``x = ul + (u + 0.5) * S / 256 - 0.5``; :meth:`crop_theta` is
  exactly that map. Faces with ``h >= 512`` are first shrunk: the whole image is resized by
  ``1 / sf`` (``sf = h / 256``) to ``floor(H / sf) x floor(W / sf)`` and the rule above runs there
  (also reproduced, given the image size).
* **Decoding** (``decode_preds``): 1-based argmax per map, maps whose maximum is ``<= 0`` give
  ``(0, 0)``; if the peak is not on the border it moves 0.25 toward the larger neighbour in
  ``x`` and in ``y``; ``+ 0.5``; then the inverse of ``get_transform`` for the 64x64 heat-map:
  ``x = (x_hm1 - 1 - 32) * h / 64 + c``, and ``int(x) + 1``.

In this module heat-map pixels are 0-based (pixel centres at integers), so the original's 1-based
``x_hm1 = p + 1`` becomes ``p`` and ``hm_to_image`` is ``x = (p + 0.5 - 32) * h / 64 + c``; a map
whose maximum is ``<= 0`` decodes to ``p = -1`` (the original's 1-based 0). ``decode`` returns that
float value; with ``truncate=True`` it returns the original's ``int(x) + 1`` exactly.

Not reproduced (photometric, not geometric): ``scipy.misc.imresize`` turns the float canvas into
``uint8`` with a min-max stretch (``bytescale``) and PIL's bilinear filter low-passes when it
shrinks; here the crop is a plain bilinear resampling of the full image, so that the gradient of
Eq. 1 reaches the original pixels.
"""

from __future__ import annotations

from typing import Any

import torch

from lb_hrnet.model import HighResolutionNet
from lbcore import ExtractorOutput, Faces, LandmarkScheme
from lbcore.extractor import HeatmapExtractor, affine_crop, apply_affine, argmax_2d
from lbcore.schemes import scheme_for

__all__ = ["HRNetExtractor", "IMAGENET_MEAN", "IMAGENET_STD", "BOX_ENLARGE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOX_ENLARGE = 1.25
"""The WFLW dataset's ``scale *= 1.25`` around the tight face box."""


class HRNetExtractor(HeatmapExtractor):
    """HRNetV2 heat-map extractor with the original crop rule and ``decode_preds``.

    Args:
        network: the :class:`~lb_hrnet.model.HighResolutionNet` (weights already loaded).
        truncate: ``decode`` returns the original's integer-truncated, ``+1`` coordinates
            instead of the float ones.
        scheme: landmark layout; default ``scheme_for(network.landmarks)`` (WFLW-98).

    Shape:
        images ``(B, 3, H, W)`` RGB in ``[0, 255]`` -> heat-maps ``(F, K, 64, 64)``.
    """

    input_size = (256, 256)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, network: HighResolutionNet, truncate: bool = False, scheme: LandmarkScheme | None = None) -> None:
        super().__init__()
        self.network = network
        self.truncate = truncate
        self.scheme = scheme or scheme_for(network.landmarks)
        # Non-persistent: the extractor's state dict is the network's, nothing more.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # -- geometry ---------------------------------------------------------------------
    @staticmethod
    def center_scale(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The original's ``center`` ``(F, 2)`` and enlarged ``scale`` ``(F,)`` (float64) of boxes."""
        b = boxes.to(torch.float64)
        center = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], dim=1)
        side = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        return center, side / 200.0 * BOX_ENLARGE

    def crop_theta(self, boxes: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The original ``crop()`` as a map from 256x256 crop pixels to image pixels.

        Args:
            boxes: ``(F, 4)`` face boxes ``x1, y1, x2, y2``.
            image_size: ``(H, W)`` of the image; only used for faces of side ``>= 512``
                crop pixels, whose image the original shrinks first (``floor(W / sf)``); without
                it the shrink factor is taken as exactly ``sf``.

        Returns:
            ``(F, 2, 3)`` float32, crop pixel ``(u, v)`` -> image pixel ``(x, y)``.
        """
        out = self.input_size[1]
        center, scale = self.center_scale(boxes)
        h = 200.0 * scale
        sf = h / out
        small = sf < 2  # the original shrinks the whole image when the crop would halve it
        sf = torch.where(small, torch.ones_like(sf), sf)
        c = center / sf[:, None]
        hh = (h / sf)[:, None]
        # transform_pixel(invert=1) of crop pixels [0, 0] and [out, out]: 1-based, int() + 1.
        ul = torch.trunc(c - hh / 2 - hh / out) + 1
        br = torch.trunc(c + hh / 2 - hh / out) + 1
        step = (br - ul) / out
        # crop u -> (shrunk) image: ul + (u + 0.5) * step - 0.5
        a = step
        b = ul + 0.5 * step - 0.5
        if image_size is not None:
            hw = torch.tensor([float(image_size[1]), float(image_size[0])], dtype=torch.float64, device=boxes.device)
            shrunk = torch.floor(hw[None, :] / sf[:, None]).clamp(min=1)
            ratio = torch.where(small[:, None], torch.ones_like(shrunk), hw[None, :] / shrunk)
        else:
            ratio = sf[:, None].expand(-1, 2)
        # shrunk image q -> full image: (q + 0.5) * ratio - 0.5 (identity when not shrunk)
        a = a * ratio
        b = (b + 0.5) * ratio - 0.5
        theta = torch.zeros(boxes.shape[0], 2, 3, dtype=torch.float64, device=boxes.device)
        theta[:, 0, 0] = a[:, 0]
        theta[:, 1, 1] = a[:, 1]
        theta[:, :, 2] = b
        return theta.to(torch.float32)

    @property
    def weights_module(self) -> torch.nn.Module:
        """The network whose state dict is the published checkpoint layout."""
        return self.network

    def decode_theta_for_boxes(self, boxes: torch.Tensor, hm_size: tuple[int, int]) -> torch.Tensor:
        """The decode map of :meth:`decode_theta` for face boxes (the trainer places its
        targets through it, so training and decoding agree)."""
        center, scale = self.center_scale(boxes)
        return self.decode_theta(center, scale, hm_size)

    def decode_theta(self, center: torch.Tensor, scale: torch.Tensor, hm_size: tuple[int, int]) -> torch.Tensor:
        """The original's inverse ``get_transform`` for 0-based heat-map pixels (float64).

        ``x = (p + 0.5 - w / 2) * h / w + c`` with ``h = 200 * scale`` (and likewise ``y``).
        """
        hh, ww = hm_size
        side = 200.0 * scale
        theta = torch.zeros(center.shape[0], 2, 3, dtype=torch.float64, device=center.device)
        theta[:, 0, 0] = side / ww
        theta[:, 1, 1] = side / hh
        theta[:, 0, 2] = center[:, 0] + (0.5 - ww / 2) * side / ww
        theta[:, 1, 2] = center[:, 1] + (0.5 - hh / 2) * side / hh
        return theta

    # -- network ----------------------------------------------------------------------
    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """RGB in ``[0, 255]`` -> ImageNet-normalised ``(x / 255 - mean) / std``."""
        return (crops / 255.0 - self.mean) / self.std

    def forward_crops(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        """Crop every face (differentiably), run HRNet, return its heat-maps.

        ``hm_to_image`` is the original's decoding transform; ``extra`` holds ``crop_theta``
        and the original's ``center``/``scale`` (float64) for exact decoding.
        """
        boxes = faces.boxes.to(images.device, torch.float32)
        theta = self.crop_theta(boxes, image_size=(int(images.shape[-2]), int(images.shape[-1])))
        crops = affine_crop(images, faces.image_index, theta, self.input_size)
        heatmaps = self.forward_crops(self.normalise(crops))
        center, scale = self.center_scale(boxes)
        hm_theta = self.decode_theta(center, scale, (int(heatmaps.shape[-2]), int(heatmaps.shape[-1])))
        extra: dict[str, Any] = {"crop_theta": theta, "center": center, "scale": scale}
        return ExtractorOutput(heatmaps=heatmaps, hm_to_image=hm_theta.to(torch.float32), extra=extra)

    # -- decoding ---------------------------------------------------------------------
    @staticmethod
    def heatmap_peaks(heatmaps: torch.Tensor) -> torch.Tensor:
        """``decode_preds`` up to the inverse transform, in 0-based heat-map pixels.

        Argmax; ``+-0.25`` toward the larger horizontal / vertical neighbour for peaks off the
        border (no shift on ties); maps whose maximum is ``<= 0`` give ``-1`` (the original's
        1-based 0, with no shift).

        Shape:
            ``(F, K, h, w)`` -> ``(F, K, 2)`` float64.
        """
        f, k, h, w = heatmaps.shape
        hm = heatmaps.detach().to(torch.float64)
        peak = argmax_2d(hm).to(torch.float64)
        flat = hm.reshape(f, k, h * w)
        maxval = flat.amax(dim=-1)
        x0 = peak[..., 0].long()
        y0 = peak[..., 1].long()
        interior = (x0 >= 1) & (x0 <= w - 2) & (y0 >= 1) & (y0 <= h - 2)

        def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            idx = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).unsqueeze(-1)
            return flat.gather(-1, idx).squeeze(-1)

        dx = torch.sign(at(y0, x0 + 1) - at(y0, x0 - 1))
        dy = torch.sign(at(y0 + 1, x0) - at(y0 - 1, x0))
        shift = torch.stack([dx, dy], dim=-1) * 0.25 * interior.unsqueeze(-1)
        coords = peak + shift
        return torch.where((maxval > 0).unsqueeze(-1), coords, torch.full_like(coords, -1.0))

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """Landmarks ``(F, K, 2)`` in image pixels, as the original ``decode_preds``.

        Float by default; with ``truncate`` the original's ``int(x) + 1`` (truncation toward
        zero, as numpy's ``astype(int)``).
        """
        if output.heatmaps is None:
            raise ValueError("HRNetExtractor.decode needs heat-maps")
        hm = output.heatmaps
        coords = self.heatmap_peaks(hm)
        center, scale = output.extra.get("center"), output.extra.get("scale")
        if center is not None and scale is not None:
            theta = self.decode_theta(center.to(hm.device), scale.to(hm.device), (int(hm.shape[-2]), int(hm.shape[-1])))
        elif output.hm_to_image is not None:
            theta = output.hm_to_image.to(torch.float64)
        else:
            raise ValueError("HRNetExtractor.decode needs hm_to_image or center/scale")
        points = apply_affine(theta, coords)
        if self.truncate:
            points = torch.trunc(points) + 1
        return points.to(torch.float32)
