"""Landmark schemes: WFLW's 98 points and iBUG/300-W's 68 points, and the map between them."""

from __future__ import annotations

from lbcore.types import LandmarkScheme

__all__ = ["WFLW98", "IBUG68", "WFLW98_TO_IBUG68", "scheme_for"]

# 98 -> 68: contour every other point, upper eyebrow arcs, nose, eyes without the
# mid-lid points the 68 scheme lacks, mouth as is.
WFLW98_TO_IBUG68: tuple[int, ...] = (
    *range(0, 33, 2),
    33, 34, 35, 36, 37,
    42, 43, 44, 45, 46,
    *range(51, 60),
    60, 61, 63, 64, 65, 67,
    68, 69, 71, 72, 73, 75,
    *range(76, 96),
)

WFLW98 = LandmarkScheme("wflw98", 98, (60, 72))
IBUG68 = LandmarkScheme("ibug68", 68, (36, 45))


def scheme_for(num_points: int) -> LandmarkScheme:
    """The scheme for a point count (98 -> WFLW, 68 -> iBUG); others get a generic scheme
    whose eye corners are the first two points."""
    if num_points == 98:
        return WFLW98
    if num_points == 68:
        return IBUG68
    return LandmarkScheme(f"custom{num_points}", num_points, (0, min(1, num_points - 1)))
