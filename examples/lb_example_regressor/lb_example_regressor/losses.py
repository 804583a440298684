"""An attack loss for extractors that output coordinates.

The attack *minimises* a loss ``(clean, adv) -> (F,)``; this one is minus the mean landmark
displacement divided by the clean face's size (the diagonal of the clean landmarks' box), so
that small and large faces in one batch weigh alike - the quantity NME measures.
"""

from __future__ import annotations

import torch

from lbcore import ExtractorOutput
from lbcore.extractor import apply_affine, soft_argmax

__all__ = ["NormalisedDisplacementLoss"]


def _coordinates(out: ExtractorOutput) -> torch.Tensor:
    """Differentiable ``(F, K, 2)`` image coordinates: the regressed ones, or a soft-argmax of
    placed heat-maps (so the loss also works with heat-map extractors)."""
    if out.landmarks is not None:
        return out.landmarks
    if out.heatmaps is None or out.hm_to_image is None:
        raise ValueError("example-nme needs landmarks or heat-maps with hm_to_image")
    return apply_affine(out.hm_to_image, soft_argmax(out.heatmaps, 0.05))


class NormalisedDisplacementLoss:
    """``-mean_k ||adv_k - clean_k|| / diag(box(clean))`` per face."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def __call__(self, clean: ExtractorOutput, adv: ExtractorOutput) -> torch.Tensor:
        c = _coordinates(clean).detach()  # the clean output is a constant of the attack
        a = _coordinates(adv)
        size = (c.amax(dim=1) - c.amin(dim=1)).norm(dim=-1).clamp_min(self.eps)
        return -(a - c).norm(dim=-1).mean(dim=-1) / size
