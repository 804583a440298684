"""``landmark-target``: pull the landmarks towards a moved copy of the clean ones.

Untargeted distance losses push each landmark along its own small displacement, directions that
conflict under dlib's cascade (every tree leaf updates the whole shape, and each level re-reads
the image around the shape the previous levels produced). A common target - the clean shape
shifted and scaled about its centre - gives every landmark one consistent direction.
"""

from __future__ import annotations

import torch

from lbcore.losses import ShapeTargetLoss
from lbcore.types import ExtractorOutput

__all__ = ["LandmarkTargetLoss"]


class LandmarkTargetLoss(ShapeTargetLoss):
    """Mean distance to the target shape, over the clean outer-eye-corner distance (minimised).

    The core's ``shape-target`` measured in iBUG-68 units: the target is the clean shape scaled by
    ``scale`` about its centroid, then shifted by ``(dx, dy)`` clean eye-corner distances; only
    extractors that output landmarks.
    """

    def __init__(self, dx: float = 0.5, dy: float = 0.0, scale: float = 1.0, eyes: tuple[int, int] = (36, 45)) -> None:
        super().__init__(dx=dx, dy=dy, scale=scale)
        self.eyes = eyes

    def coords(self, out: ExtractorOutput) -> torch.Tensor:
        if out.landmarks is None:
            raise ValueError("landmark-target needs an extractor that outputs landmarks")
        return out.landmarks.float()

    def size(self, clean: torch.Tensor) -> torch.Tensor:
        return (clean[:, self.eyes[0]] - clean[:, self.eyes[1]]).norm(dim=-1).clamp_min(1e-6)
