"""The extractor contract and the geometry every extractor shares.

An extractor is a ``torch.nn.Module`` that, given full-resolution images and face boxes (see
:mod:`lbcore.types`), crops each face with a *differentiable* affine resampling of the full
image (so the gradient of Eq. 1 lands on the original pixels), runs its network and returns an
:class:`~lbcore.types.ExtractorOutput`. ``decode`` turns that output into landmarks in image
coordinates exactly like the original code does (float path by default).

Heat-map extractors subclass :class:`HeatmapExtractor` and supply four things: ``crop_theta``
(their crop rule as an affine map), ``normalise`` (their input normalisation), ``forward_crops``
(the network) and ``decode``. Everything else is here, once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lbcore.types import ExtractorOutput, Faces, LandmarkScheme

__all__ = [
    "ConvOutput",
    "ResidualAdd",
    "Extractor",
    "HeatmapExtractor",
    "affine_crop",
    "apply_affine",
    "render_gaussians",
    "compose_affine",
    "scale_affine",
    "soft_argmax",
    "argmax_2d",
]


def apply_affine(theta: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``(F, 2, 3)`` affine maps to ``(F, K, 2)`` points."""
    return points @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Return the affine map ``outer(inner(p))``; both ``(F, 2, 3)``."""
    a = outer[:, :, :2] @ inner[:, :, :2]
    b = outer[:, :, :2] @ inner[:, :, 2:] + outer[:, :, 2:]
    return torch.cat([a, b], dim=2)


def scale_affine(sx: float, sy: float, n: int, device: Any = "cpu", offset: float = 0.5) -> torch.Tensor:
    """Map pixel centres of a grid to a grid ``sx`` x ``sy`` times finer/coarser.

    With pixel centres at integers and ``offset=0.5``: ``x' = (x + 0.5) * sx - 0.5`` - the
    relation between a heat-map and the crop it was computed from when both cover the same
    area (also OpenCV's resize convention).
    """
    theta = torch.tensor(
        [[sx, 0.0, offset * sx - offset], [0.0, sy, offset * sy - offset]],
        dtype=torch.float32,
        device=device,
    )
    return theta.expand(n, 2, 3).clone()


def affine_crop(
    images: torch.Tensor,
    image_index: torch.Tensor,
    theta: torch.Tensor,
    size: tuple[int, int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Differentiably resample face crops from full images.

    Args:
        images: ``(B, C, H, W)`` full images.
        image_index: ``(F,)`` which image each crop comes from.
        theta: ``(F, 2, 3)`` maps crop pixel coordinates ``(u, v)`` to image pixel coordinates
            ``(x, y)`` (pixel centres at integers).
        size: ``(h, w)`` of the crop.

    Returns:
        ``(F, C, h, w)`` crops; samples outside the image are zero (the originals' zero
        padding). Gradients flow back to ``images``.
    """
    h, w = size
    n = theta.shape[0]
    _, _, H, W = images.shape
    dev = images.device
    if n == 0:
        return images.new_zeros((0, images.shape[1], h, w))
    v, u = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    uv = torch.stack([u, v], dim=-1).reshape(1, h * w, 2).expand(n, h * w, 2)
    xy = apply_affine(theta.to(dev, torch.float32), uv)
    gx = (2.0 * xy[..., 0] + 1.0) / W - 1.0
    gy = (2.0 * xy[..., 1] + 1.0) / H - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(n, h, w, 2).to(images.dtype)
    return _sample_per_image(images, image_index.to(dev), grid, mode)


def _sample_per_image(images: torch.Tensor, image_index: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """``grid_sample`` of face grids from their images without copying whole images per face.

    ``images.index_select(0, image_index)`` would copy every full image once per face (and its
    backward would scatter full-size gradients back): on 720p frames that is megabytes per face
    per attack step. Instead, one face per image in order samples ``images`` directly, and
    several faces per image sample side by side from one grid per image (slots an image does
    not use point far outside it and give zeros). Each output value is computed by the same
    bilinear formula from the same pixels as before, so the crops are bit-identical.
    """
    n, h, w, _ = grid.shape
    b = images.shape[0]
    if n == b and bool((image_index == torch.arange(b, device=image_index.device)).all()):
        return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    counts = torch.bincount(image_index, minlength=b)
    k = int(counts.max())
    if b * k > 2 * n:  # very uneven face counts: padding would cost more than the copies
        src = images.index_select(0, image_index)
        return F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)
    # slot of each face among its image's faces (stable order of appearance)
    order = torch.argsort(image_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(image_index)
    slot[order] = torch.arange(n, device=image_index.device) - starts[image_index[order]]
    wide = grid.new_full((b, h, k, w, 2), -8.0)
    wide[image_index, :, slot] = grid
    out = F.grid_sample(images, wide.reshape(b, h, k * w, 2), mode=mode, padding_mode="zeros", align_corners=False)
    return out.reshape(b, images.shape[1], h, k, w)[image_index, :, :, slot]


def argmax_2d(heatmaps: torch.Tensor) -> torch.Tensor:
    """Integer ``(x, y)`` of each map's maximum: ``(F, K, h, w) -> (F, K, 2)`` float."""
    f, k, h, w = heatmaps.shape
    idx = heatmaps.reshape(f, k, h * w).argmax(dim=-1)
    return torch.stack([(idx % w).float(), torch.div(idx, w, rounding_mode="floor").float()], dim=-1)


def soft_argmax(heatmaps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Differentiable expected position under a spatial softmax: ``(F, K, h, w) -> (F, K, 2)``.

    Used where a loss needs landmark coordinates with a gradient (landmark-displacement loss);
    never used to report landmarks, which always come from the extractor's own ``decode``.
    """
    f, k, h, w = heatmaps.shape
    prob = torch.softmax(heatmaps.reshape(f, k, h * w).float() / temperature, dim=-1).reshape(f, k, h, w)
    xs = torch.arange(w, device=heatmaps.device, dtype=prob.dtype)
    ys = torch.arange(h, device=heatmaps.device, dtype=prob.dtype)
    x = (prob.sum(dim=2) * xs).sum(dim=-1)
    y = (prob.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def render_gaussians(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``(F, K, size, size)`` isotropic Gaussians centred at ``(F, K, 2)`` heat-map pixel
    coordinates, differentiable in the points: the heat-maps Eq. 1 compares for a network that
    regresses coordinates."""
    grid = torch.arange(size, device=points.device, dtype=points.dtype)
    dx = (grid[None, None, None, :] - points[..., 0, None, None]) ** 2
    dy = (grid[None, None, :, None] - points[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2.0 * sigma * sigma))


class ConvOutput(torch.nn.Identity):
    """Marks the output of a convolution that a network runs functionally (``F.conv2d``).

    Call one on each convolution's output (before its activation), as a ``Conv2d`` module's
    output would be: the attack's hooks that read or modify convolution outputs (``feature_mix``,
    ``ghost``) see these as they see ``Conv2d`` modules. It has no parameters and changes nothing.
    """


class ResidualAdd(torch.nn.Module):
    """``skip + residual``: the sum that closes a residual block, marked for the attack.

    Networks call one where a residual block adds its branch to its input (a module with no
    parameters: checkpoints are unchanged). The forward is the plain sum; while ``gamma`` < 1
    (the attack's ``sgm`` setting, the skip gradient method of Wu et al., ICLR 2020) the gradient
    that flows back into the residual branch is scaled by ``gamma``, so more of it reaches the
    input through the skip connections.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = 1.0

    def forward(self, skip: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.gamma != 1.0 and torch.is_grad_enabled():
            residual = residual * self.gamma + (residual * (1.0 - self.gamma)).detach()
        return skip + residual


def residual_adds(module: torch.nn.Module) -> list[ResidualAdd]:
    """The :class:`ResidualAdd` modules of a network, in module order."""
    return [m for m in module.modules() if isinstance(m, ResidualAdd)]


def conv_outputs(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose outputs are convolution outputs (``Conv2d`` and :class:`ConvOutput`),
    in module order."""
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d | ConvOutput)]


class Extractor(torch.nn.Module):
    """Base class of every landmark extractor.

    Subclasses set ``scheme`` and implement ``forward`` and ``decode``. ``forward`` must be
    differentiable with respect to ``images``. Devices are never inferred here: the caller moves
    the module and the tensors (see :func:`lbcore.engine.attack`).
    """

    scheme: LandmarkScheme
    shares_crops: bool = False
    """Whether photos may share this extractor's network calls (``lb protect --photo-batch``):
    ``forward`` runs the network as ``self.forward_crops(crops)``, which maps a batch of face crops
    to per-crop rows (a tensor, or a tuple of it and per-crop extras that no loss differentiates)
    and, on the CPU with oneDNN off, gives every crop the same numbers alone and in a batch of
    up to 15."""

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:  # pragma: no cover
        raise NotImplementedError

    def decode(self, output: ExtractorOutput) -> torch.Tensor:  # pragma: no cover
        """Landmarks ``(F, K, 2)`` in image pixel coordinates, as the original code decodes."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor, faces: Faces) -> torch.Tensor:
        """Convenience: ``decode(forward(images, faces))`` without gradients."""
        return self.decode(self(images, faces))


class HeatmapExtractor(Extractor):
    """Template for heat-map networks that see an affine crop of each face.

    Subclasses define ``input_size`` ``(h, w)``, ``crop_theta(boxes)``, ``normalise(crops)``,
    ``forward_crops(x)`` and ``decode(output)``. ``forward_crops`` returns the heat-maps that
    Eq. 1 compares, or a tuple ``(heatmaps, extra_dict)``.
    """

    input_size: tuple[int, int] = (256, 256)
    shares_crops = True

    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """``(F, 4)`` boxes -> ``(F, 2, 3)`` maps from crop pixels to image pixels."""
        raise NotImplementedError

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Crops in ``[0, 255]`` RGB -> the network's input."""
        raise NotImplementedError

    def forward_crops(self, x: torch.Tensor) -> Any:  # pragma: no cover
        raise NotImplementedError

    def heatmap_theta(self, crop_theta: torch.Tensor, hm_size: tuple[int, int]) -> torch.Tensor:
        """Heat-map pixel -> image pixel map; default: the heat-map covers the crop uniformly."""
        sx = self.input_size[1] / hm_size[1]
        sy = self.input_size[0] / hm_size[0]
        return compose_affine(crop_theta, scale_affine(sx, sy, crop_theta.shape[0], crop_theta.device))

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        theta = self.crop_theta(faces.boxes.to(images.device, torch.float32))
        crops = affine_crop(images, faces.image_index, theta, self.input_size)
        out = self.forward_crops(self.normalise(crops))
        extra: dict[str, Any] = {}
        if isinstance(out, tuple):
            out, extra = out
        hm_theta = self.heatmap_theta(theta, (out.shape[-2], out.shape[-1]))
        extra.setdefault("crop_theta", theta)
        return ExtractorOutput(heatmaps=out, hm_to_image=hm_theta, extra=extra)
