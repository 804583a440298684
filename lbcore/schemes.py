"""Landmark schemes: WFLW's 98 points and iBUG/300-W's 68 points, the map between them, and
their horizontal-flip permutations.

"Right" and "left" below are the subject's: the subject's right eye is on the image's left.

WFLW-98 layout (0-based)::

    0-32   face contour, from the right temple over the chin (16) to the left temple
    33-41  right eyebrow: 33-37 upper arc outer->inner, 38-41 lower arc inner->outer
    42-50  left eyebrow:  42-46 upper arc inner->outer, 47-50 lower arc outer->inner
    51-54  nose bridge, top to tip;  55-59 nostril base, right to left (57 = centre)
    60-67  right eye: 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid
    68-75  left eye:  68 inner corner, 69-71 upper lid, 72 outer corner, 73-75 lower lid
    76-87  outer lips: 76 right corner, 77-81 upper, 82 left corner, 83-87 lower
    88-95  inner lips: 88 right corner, 89-91 upper, 92 left corner, 93-95 lower
    96, 97 right and left pupil

iBUG-68 layout (0-based; the same order with fewer points)::

    0-16 contour, 17-21 right eyebrow (outer->inner), 22-26 left eyebrow (inner->outer),
    27-30 nose bridge, 31-35 nostril base, 36-41 right eye (36 outer, 39 inner corner),
    42-47 left eye (42 inner, 45 outer corner), 48-59 outer lips (48/54 corners),
    60-67 inner lips (60/64 corners)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lbcore.errors import SpecError
from lbcore.types import LandmarkScheme

__all__ = [
    "WFLW98",
    "IBUG68",
    "FIVE",
    "known_scheme",
    "WFLW98_TO_IBUG68",
    "scheme_for",
    "flip_permutation",
    "convert_landmarks",
]

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


def _permutation_from_pairs(num_points: int, pairs: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """An involution on ``range(num_points)`` swapping each pair; unpaired points map to
    themselves (points on the face's vertical midline)."""
    perm = list(range(num_points))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


def _reversed_pairs(first: int, last: int) -> list[tuple[int, int]]:
    """Pairs of a run that a horizontal flip reverses (``first <-> last``, ...)."""
    return [(first + i, last - i) for i in range((last - first + 1) // 2)]


# Derived from the layouts in the module docstring: every run that goes from one side of the
# face to the other is reversed; left and right parts swap point by point.
_WFLW98_FLIP = _permutation_from_pairs(
    98,
    [
        *_reversed_pairs(0, 32),  # contour
        *zip(range(33, 38), range(46, 41, -1), strict=True),  # upper brow arcs: 33<->46 ... 37<->42
        *zip(range(38, 42), range(50, 46, -1), strict=True),  # lower brow arcs: 38<->50 ... 41<->47
        *_reversed_pairs(55, 59),  # nostril base
        (60, 72), (61, 71), (62, 70), (63, 69), (64, 68),  # eye corners and upper lids
        (65, 75), (66, 74), (67, 73),  # lower lids
        *_reversed_pairs(76, 82),  # outer upper lip, corner to corner
        *_reversed_pairs(83, 87),  # outer lower lip
        *_reversed_pairs(88, 92),  # inner upper lip
        *_reversed_pairs(93, 95),  # inner lower lip
        (96, 97),  # pupils
    ],
)

_IBUG68_FLIP = _permutation_from_pairs(
    68,
    [
        *_reversed_pairs(0, 16),  # contour
        *_reversed_pairs(17, 26),  # both eyebrows, outer right to outer left
        *_reversed_pairs(31, 35),  # nostril base
        (36, 45), (37, 44), (38, 43), (39, 42),  # eye corners and upper lids
        (40, 47), (41, 46),  # lower lids
        *_reversed_pairs(48, 54),  # outer upper lip
        *_reversed_pairs(55, 59),  # outer lower lip
        *_reversed_pairs(60, 64),  # inner upper lip
        *_reversed_pairs(65, 67),  # inner lower lip
    ],
)

WFLW98 = LandmarkScheme("wflw98", 98, (60, 72), _WFLW98_FLIP)
IBUG68 = LandmarkScheme("ibug68", 68, (36, 45), _IBUG68_FLIP)
FIVE = LandmarkScheme("five", 5, (0, 1))
"""The five keypoints of face detectors (MTCNN, RetinaFace, InsightFace): the two eye centres
(0, 1), the nose tip (2) and the two mouth corners (3, 4). NME is normalised by the distance
between the eye centres. No flip order is declared: detectors disagree on which side comes
first, so a plugin that needs one declares its own scheme."""

_BY_NAME = {WFLW98.name: WFLW98, IBUG68.name: IBUG68, FIVE.name: FIVE}
_BY_COUNT = {98: WFLW98, 68: IBUG68, 5: FIVE}


def known_scheme(num_points: int) -> LandmarkScheme | None:
    """The known scheme with ``num_points`` points (98, 68 or 5), or None."""
    return _BY_COUNT.get(int(num_points))


def scheme_for(num_points: int) -> LandmarkScheme:
    """The scheme for a point count: 98 -> WFLW, 68 -> iBUG, 5 -> the detectors' five keypoints.

    Any other count is refused: its outer eye corners (which normalise every NME) cannot be
    guessed. An extractor with another layout declares its own :class:`LandmarkScheme`, e.g.
    ``LandmarkScheme("helen194", 194, eye_corners=(114, 134))``.

    Raises:
        SpecError: no scheme is known for ``num_points``.
    """
    found = known_scheme(num_points)
    if found is None:
        raise SpecError(
            f"no landmark scheme is known for {num_points} points (known: 98 WFLW, 68 iBUG, 5 keypoints); "
            f"declare one: LandmarkScheme(name, {num_points}, eye_corners=(i, j))"
        )
    return found


def _as_scheme(scheme: LandmarkScheme | str | int) -> LandmarkScheme:
    """A scheme from a scheme, its name (``"wflw98"``, ``"ibug68"``) or its point count."""
    if isinstance(scheme, LandmarkScheme):
        return scheme
    if isinstance(scheme, bool):  # bool is an int; never a point count
        raise SpecError(f"landmark scheme: {scheme!r} is not a scheme, name or point count")
    if isinstance(scheme, int):
        return scheme_for(scheme)
    if isinstance(scheme, str):
        found = _BY_NAME.get(scheme.lower())
        if found is None:
            raise SpecError(
                f"landmark scheme: unknown name {scheme!r} (known: {', '.join(sorted(_BY_NAME))})"
            )
        return found
    raise SpecError(f"landmark scheme: {scheme!r} is not a scheme, name or point count")


def flip_permutation(scheme: LandmarkScheme | str | int) -> tuple[int, ...]:
    """The mirror index of each point under a horizontal flip.

    After flipping an image horizontally, point ``i`` of the flipped face is point
    ``perm[i]`` of the original with its x mirrored: ``flipped = pts[perm]`` then
    ``flipped[:, 0] = (W - 1) - flipped[:, 0]`` (pixel centres at integers).

    Args:
        scheme: a :class:`LandmarkScheme`, its name or its point count (98 or 68).

    Returns:
        A permutation of ``range(K)`` that is its own inverse.

    Raises:
        SpecError: the scheme has no known flip order.
    """
    s = _as_scheme(scheme)
    if len(s.flip_permutation) != s.num_points:
        raise SpecError(f"landmark scheme {s.name}: no horizontal flip order is known")
    return s.flip_permutation


def convert_landmarks(
    points: Any,
    from_scheme: LandmarkScheme | str | int,
    to_scheme: LandmarkScheme | str | int,
) -> Any:
    """Re-express landmarks of one scheme in another.

    Supported: WFLW-98 -> iBUG-68 (through :data:`WFLW98_TO_IBUG68`) and any scheme to
    itself (returned unchanged). A 68-point set holds too little to make 98 points, so the
    other direction is refused.

    Args:
        points: ``(..., K, 2)`` numpy array or torch tensor; the point axis is second to last.
        from_scheme, to_scheme: schemes, their names or point counts.

    Returns:
        ``(..., K', 2)`` of the same type (a view/gather of the input, never a copy for the
        identity).

    Raises:
        SpecError: an unsupported pair of schemes, or ``points`` not of ``from_scheme``'s size.
    """
    src, dst = _as_scheme(from_scheme), _as_scheme(to_scheme)
    shape = tuple(points.shape)
    if len(shape) < 2 or shape[-2] != src.num_points:
        raise SpecError(
            f"convert_landmarks: points of shape {shape} are not {src.num_points} points "
            f"of scheme {src.name}"
        )
    if src.name == dst.name:
        return points
    if src.name == WFLW98.name and dst.name == IBUG68.name:
        return points[..., list(WFLW98_TO_IBUG68), :]
    raise SpecError(f"convert_landmarks: cannot convert {src.name} landmarks to {dst.name}")
