"""``landmark-target``: pull the landmarks towards a moved copy of the clean ones.

Untargeted distance losses push each landmark along its own small displacement, directions that
conflict under dlib's cascade (every tree leaf updates the whole shape, and each level re-reads
the image around the shape the previous levels produced). A common target - the clean shape
shifted and scaled about its centre - gives every landmark one consistent direction.
"""

from __future__ import annotations

import torch

from lbcore.types import ExtractorOutput

__all__ = ["LandmarkTargetLoss"]


class LandmarkTargetLoss:
    """Mean distance to the target shape, over the clean outer-eye-corner distance (minimised).

    The target is the clean shape scaled by ``scale`` about its centroid, then shifted by
    ``(dx, dy)`` clean eye-corner distances.
    """

    def __init__(self, dx: float = 0.5, dy: float = 0.0, scale: float = 1.0, eyes: tuple[int, int] = (36, 45)) -> None:
        self.dx, self.dy, self.scale, self.eyes = dx, dy, scale, eyes

    def __call__(self, clean: ExtractorOutput, adv: ExtractorOutput) -> torch.Tensor:
        if clean.landmarks is None or adv.landmarks is None:
            raise ValueError("landmark-target needs an extractor that outputs landmarks")
        c = clean.landmarks.detach().float()
        a = adv.landmarks.float()
        iod = (c[:, self.eyes[0]] - c[:, self.eyes[1]]).norm(dim=-1).clamp_min(1e-6)  # (F,)
        centre = c.mean(1, keepdim=True)
        shift = torch.tensor([self.dx, self.dy], dtype=c.dtype, device=c.device)
        target = centre + self.scale * (c - centre) + shift * iod[:, None, None]
        return (a - target).norm(dim=-1).mean(-1) / iod
