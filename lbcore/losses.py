"""Attack losses: ``(clean, adv) -> (F,)`` per-face values that the attack *minimises*."""

from __future__ import annotations

import torch

from lbcore.extractor import apply_affine, soft_argmax
from lbcore.types import ExtractorOutput

__all__ = ["heatmap_cosine_loss", "HeatmapCosineLoss", "LandmarkDisplacementLoss", "ShapeTargetLoss"]


def heatmap_cosine_loss(clean: torch.Tensor, adv: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 1 of the paper: sum over landmarks of cos(h_i, h^_i), per face.

    Args:
        clean: ``(F, K, h, w)`` heat-maps of the clean image (constants).
        adv: ``(F, K, h, w)`` heat-maps of the adversarial image.

    Returns:
        ``(F,)``: values in ``[-K, K]``; minimising pushes each heat-map away from the clean one.
    """
    c = clean.flatten(2).float()
    a = adv.flatten(2).float()
    dot = (c * a).sum(-1)
    norm = c.norm(dim=-1) * a.norm(dim=-1)
    return (dot / norm.clamp_min(eps)).sum(-1)


class HeatmapCosineLoss:
    """Eq. 1 on the heat-maps the extractor exposes (the paper's loss)."""

    def __call__(self, clean: ExtractorOutput, adv: ExtractorOutput) -> torch.Tensor:
        if clean.heatmaps is None or adv.heatmaps is None:
            raise ValueError(
                "heatmap-cosine needs heat-maps; this extractor regresses coordinates: "
                "use the landmark-displacement loss"
            )
        return heatmap_cosine_loss(clean.heatmaps.detach(), adv.heatmaps)


def _coords(out: ExtractorOutput, temperature: float) -> torch.Tensor:
    if out.landmarks is not None:
        return out.landmarks
    if out.heatmaps is None or out.hm_to_image is None:
        raise ValueError("extractor output has neither landmarks nor placed heat-maps")
    return apply_affine(out.hm_to_image, soft_argmax(out.heatmaps, temperature))


class LandmarkDisplacementLoss:
    """Minus the mean distance (image pixels) between clean and adversarial landmarks.

    Works with regression extractors (their differentiable ``landmarks``) and heat-map ones (a
    soft-argmax of the heat-maps placed in the image).
    """

    def __init__(self, temperature: float = 0.05) -> None:
        self.temperature = temperature

    def __call__(self, clean: ExtractorOutput, adv: ExtractorOutput) -> torch.Tensor:
        c = _coords(clean, self.temperature).detach()
        a = _coords(adv, self.temperature)
        return -(a - c).norm(dim=-1).mean(dim=-1)


class ShapeTargetLoss:
    """Targeted: the mean distance between the adversarial landmarks and one shared target shape.

    The target is the clean shape scaled by ``scale`` about its centre and moved by ``(dx, dy)``
    times its size (the larger side of its bounding box), so every extractor in an ensemble is
    pushed the same way, whatever its points; the distance is divided by that size.
    """

    def __init__(self, dx: float = 0.0, dy: float = 0.25, scale: float = 1.0, temperature: float = 0.05) -> None:
        self.dx, self.dy, self.scale, self.temperature = dx, dy, scale, temperature

    def coords(self, out: ExtractorOutput) -> torch.Tensor:
        """``(F, K, 2)`` landmark coordinates in image pixels (soft-argmax for heat-map models)."""
        return _coords(out, self.temperature).float()

    def size(self, clean: torch.Tensor) -> torch.Tensor:
        """``(F,)`` the unit of the shift and the distance: the larger side of the clean shape's box."""
        return (clean.amax(dim=1) - clean.amin(dim=1)).amax(dim=-1).clamp_min(1e-6)

    def __call__(self, clean: ExtractorOutput, adv: ExtractorOutput) -> torch.Tensor:
        c = self.coords(clean).detach()
        a = self.coords(adv)
        centre = c.mean(dim=1, keepdim=True)
        size = self.size(c)
        shift = torch.tensor([self.dx, self.dy], dtype=c.dtype, device=c.device)
        target = centre + (c - centre) * self.scale + shift * size.view(-1, 1, 1)
        return (a - target).norm(dim=-1).mean(dim=-1) / size
