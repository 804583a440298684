"""The degradation contract: image-to-image stages applied after (or during) an attack.

A degradation is a callable ``(B, 3, H, W)`` float ``[0, 255]`` -> same shape. Video stages
treat the batch as consecutive frames. ``differentiable`` says whether gradients flow through
it (a straight-through estimator counts); ``stochastic`` whether each call draws new random
parameters (expectation over transformation). Chains are written ``a+b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Degradation", "Chain"]


class Degradation:
    """Base class for degradations; subclasses implement ``__call__``."""

    differentiable: bool = False
    stochastic: bool = False
    video: bool = False
    local_radius: int | None = None
    """How far (pixels) a pixel's result depends on its neighbours, where that is bounded and
    position-independent on a 16-pixel grid (``lb protect`` may then attack a window of a large
    photo); ``None``: unknown or the whole image."""

    def __call__(self, images: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


class Chain(Degradation):
    """Stages applied in order (``jpeg:quality=75+h264:crf=23``)."""

    def __init__(self, stages: Sequence[Any]) -> None:
        self.stages = list(stages)
        self.differentiable = all(getattr(s, "differentiable", False) for s in self.stages)
        self.stochastic = any(getattr(s, "stochastic", False) for s in self.stages)
        self.video = any(getattr(s, "video", False) for s in self.stages)

    def __call__(self, images: Any) -> Any:
        for s in self.stages:
            images = s(images)
        return images
