"""The tensor contract shared by every component.

Images
    ``float32`` RGB tensors of shape ``(B, 3, H, W)`` with values in ``[0, 255]`` - the range
    the paper writes its budget in (epsilon = 15). Every component takes and returns images in
    this range; normalisation to a network's own input range happens inside the extractor.

Faces
    A batch of faces across the images of a batch: ``boxes`` ``(F, 4)`` as ``x1, y1, x2, y2`` in
    the pixel coordinates of the full-resolution image (pixel centres at integers, as OpenCV),
    and ``image_index`` ``(F,)`` telling which image of the batch each face belongs to.

Landmarks
    ``(F, K, 2)`` ``(x, y)`` in the full image's pixel coordinates.

This module imports torch lazily so that listing plugins stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import torch


@attrs.frozen
class LandmarkScheme:
    """A landmark layout: how many points, and which two are the outer eye corners.

    The outer eye corners normalise NME (60/72 for WFLW-98, 36/45 for iBUG-68).
    ``flip_permutation`` maps each point to its mirror image under a horizontal flip
    (used by training augmentation); empty when unknown.
    """

    name: str
    num_points: int
    eye_corners: tuple[int, int]
    flip_permutation: tuple[int, ...] = ()


@attrs.frozen
class Faces:
    """Face boxes of a batch of images (see the module docstring for shapes)."""

    boxes: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: Any) -> Faces:
        return Faces(self.boxes.to(device), self.image_index.to(device))

    @classmethod
    def from_lists(cls, boxes_per_image: list[Any], device: Any = "cpu") -> Faces:
        """Build from one ``(n_i, 4)`` array-like of boxes per image."""
        import torch

        rows: list[list[float]] = []
        index: list[int] = []
        for i, boxes in enumerate(boxes_per_image):
            for b in boxes:
                rows.append([float(v) for v in list(b)[:4]])
                index.append(i)
        box_t = torch.tensor(rows, dtype=torch.float32, device=device).reshape(-1, 4)
        return cls(box_t, torch.tensor(index, dtype=torch.long, device=device))


@attrs.define
class ExtractorOutput:
    """What an extractor returns for a batch of faces.

    Attributes:
        heatmaps: ``(F, K, h, w)`` heat-maps exactly as the network outputs them (the ones
            Eq. 1 compares), or ``None`` for extractors that regress coordinates.
        landmarks: ``(F, K, 2)`` differentiable landmark coordinates in image pixels, for
            regression extractors; ``None`` for heat-map extractors (use ``decode``).
        hm_to_image: ``(F, 2, 3)`` affine map from heat-map pixel coordinates (pixel centres
            at integers) to full-image pixel coordinates; lets generic code (soft-argmax,
            landmark-displacement loss) place heat-map points in the image.
        extra: anything else the extractor wants to keep (all stacks, background maps, ...).
    """

    heatmaps: torch.Tensor | None = None
    landmarks: torch.Tensor | None = None
    hm_to_image: torch.Tensor | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)
