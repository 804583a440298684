"""Evaluation metrics of the paper: NME of landmarks, mask-SSIM (SSIM_I / SSIM_W) and PSNR.

Inputs
    Images are numpy arrays ``(H, W)`` or ``(H, W, C)`` (uint8 or float) with values in
    ``0..255``. Torch tensors are accepted and converted: ``(C, H, W)`` or ``(1, C, H, W)``
    with ``C`` in {1, 3} (the project's tensor contract) become ``(H, W, C)``; a 2-D tensor is a
    greyscale image. Landmarks are ``(K, 2)`` or ``(F, K, 2)`` ``(x, y)`` arrays or tensors.
    Boxes are ``(4,)`` ``x1, y1, x2, y2`` in image pixels (pixel centres at integers).

NME (Normalised Mean Error)
    Mean point-to-point Euclidean error divided by the distance between the ground truth's
    outer eye corners (60/72 for WFLW-98, 36/45 for iBUG-68), as the paper describes.

SSIM
    Wang et al. 2004: an 11x11 Gaussian window with sigma = 1.5, K1 = 0.01, K2 = 0.03,
    population (not sample) covariances, on ``0..255`` data (``data_range = 255``). The SSIM map
    is filtered with mirror-reflected borders, and pixels within 5 of the image border (half the
    window) are left out of every mean, as in the authors' reference code and
    ``skimage.metrics.structural_similarity``. Colour images: SSIM is computed per channel and
    the channel results are averaged (skimage's ``channel_axis`` convention), not on luminance.

Face-region SSIM (the headline SSIM_I and SSIM_W of ``lb evaluate``)
    Both images are resampled into the same fixed-size crop of the face (SSIM_I: the face box at
    ``FACE_SSIM_SIZE`` px; SSIM_W: the face-swap alignment of the clean landmarks at the swap
    model's resolution, see :mod:`lbcore.apps.synthesis`)
    and the SSIM map is averaged over that crop, optionally weighted (SSIM_W: the union of the
    two blend masks). A face's size in the frame then does not change the figure; the paper's
    whole-image mask-SSIM below rewards every identical zero outside the face, so a small face
    in a large frame scores close to 1 whatever happens inside it.

SSIM_I (mask-SSIM, the paper's footnote 4, after Ma et al. 2017)
    Image quality inside the face region. ``variant="masked-image"`` (the paper's): both images
    are multiplied by the 0/1 mask and the whole-image SSIM of the products is taken.
    ``variant="mask-mean"``: the SSIM map of the unmasked images averaged over the mask only
    (it does not reward the identical zeros outside the face, so it is lower and stricter).

This module imports only numpy (and OpenCV for filtering); torch is never imported here -
tensors are recognised by their ``detach`` method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from lbcore.errors import InputError, SpecError

__all__ = [
    "nme",
    "nme_mean",
    "failure_rate",
    "FAILURE_THRESHOLDS",
    "ssim",
    "ssim_map",
    "mask_ssim",
    "psnr",
    "face_mask",
    "hull_mask",
    "region_mask_ssim",
    "FACE_SSIM_SIZE",
    "box_matrix",
    "resample",
    "crop_ssim",
    "edge_band",
]

FAILURE_THRESHOLDS: tuple[float, float] = (0.08, 0.10)
"""NME thresholds the reports give failure rates at."""

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): an 11-tap window, as Wang et al. 2004
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


# --------------------------------------------------------------------------- conversion


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array-like or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_image(x: Any, what: str = "image") -> np.ndarray:
    """An ``(H, W, C)`` float64 image from a numpy ``(H, W)``/``(H, W, C)`` array or a torch
    ``(H, W)``/``(C, H, W)``/``(1, C, H, W)`` tensor."""
    is_tensor = hasattr(x, "detach")
    a = _to_numpy(x)
    if is_tensor:
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 3 and a.shape[0] in (1, 3):  # the tensor contract is channels-first
            a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise InputError(f"{what}: expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def _as_points(x: Any, what: str) -> np.ndarray:
    a = _to_numpy(x).astype(np.float64, copy=False)
    if a.ndim not in (2, 3) or a.shape[-1] != 2:
        raise InputError(f"{what}: expected (K, 2) or (F, K, 2) landmarks, got shape {a.shape}")
    return a


# --------------------------------------------------------------------------- NME


def _eye_corners(
    scheme_or_eye_corners: Any, num_points: int
) -> tuple[int, int]:
    """The outer-eye-corner indices for points of ``num_points`` in the compared layout."""
    from lbcore.schemes import IBUG68, WFLW98
    from lbcore.types import LandmarkScheme

    spec = scheme_or_eye_corners
    if isinstance(spec, np.ndarray) or hasattr(spec, "detach"):
        spec = _to_numpy(spec).ravel().tolist()
    if spec is None:
        by_count = {98: WFLW98, 68: IBUG68}
        if num_points not in by_count:
            raise SpecError(
                f"nme: no known eye corners for {num_points} points; pass the two "
                "outer-eye-corner indices"
            )
        return by_count[num_points].eye_corners
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != 2 or not all(0 <= int(i) < num_points for i in spec):
            raise SpecError(f"nme: eye corners {tuple(spec)} are not two indices below {num_points}")
        return int(spec[0]), int(spec[1])
    if isinstance(spec, LandmarkScheme | str | int):
        from lbcore.schemes import _as_scheme

        scheme = _as_scheme(spec)
        if scheme.num_points != num_points:
            # A 98-point scheme with landmarks compared as 68 points: use the 68 scheme's corners.
            if scheme.num_points == 98 and num_points == 68:
                return IBUG68.eye_corners
            raise SpecError(
                f"nme: scheme {scheme.name} has {scheme.num_points} points, the landmarks "
                f"have {num_points}"
            )
        return scheme.eye_corners
    raise SpecError(f"nme: {spec!r} is neither a scheme nor two eye-corner indices")


def nme(pred: Any, gt: Any, scheme_or_eye_corners: Any = None) -> Any:
    """Per-face Normalised Mean Error.

    ``mean_k ||pred_k - gt_k|| / ||gt_a - gt_b||`` with ``a, b`` the ground truth's outer eye
    corners. When one side has 98 points and the other 68, the 98-point side is converted to
    iBUG-68 first (:func:`lbcore.schemes.convert_landmarks`) and the 68-point corners are used.

    Args:
        pred: predicted landmarks ``(K, 2)`` or ``(F, K, 2)``.
        gt: ground-truth landmarks of the same shape (or the other of 68/98 points).
        scheme_or_eye_corners: ``None`` (from the point count: 98 or 68), a
            :class:`~lbcore.types.LandmarkScheme`, its name or point count, or two indices
            ``(a, b)`` into the compared points.

    Returns:
        A float for one face, an ``(F,)`` float64 array for a batch.

    Raises:
        InputError: shapes disagree, or a ground truth's eye corners coincide.
        SpecError: point counts that cannot be compared, or bad eye corners.
    """
    from lbcore.schemes import convert_landmarks

    p, g = _as_points(pred, "nme pred"), _as_points(gt, "nme gt")
    kp, kg = p.shape[-2], g.shape[-2]
    if kp != kg:
        if {kp, kg} != {68, 98}:
            raise SpecError(f"nme: cannot compare {kp}-point predictions with {kg}-point ground truth")
        p, g = convert_landmarks(p, kp, 68), convert_landmarks(g, kg, 68)
    if p.shape != g.shape:
        raise InputError(f"nme: pred shape {p.shape} does not match gt shape {g.shape}")
    a, b = _eye_corners(scheme_or_eye_corners, p.shape[-2])
    single = p.ndim == 2
    p3, g3 = (p[None], g[None]) if single else (p, g)
    norm = np.linalg.norm(g3[:, a] - g3[:, b], axis=-1)
    if np.any(norm <= 0):
        bad = int(np.flatnonzero(norm <= 0)[0])
        raise InputError(f"nme: ground truth of face {bad} has coinciding eye corners {a} and {b}")
    err = np.linalg.norm(p3 - g3, axis=-1).mean(axis=-1) / norm
    return float(err[0]) if single else err


def nme_mean(nmes: Any) -> float:
    """Mean NME over faces (NaN for an empty list); NaNs propagate (a missed face is not
    silently dropped)."""
    a = _to_numpy(nmes).astype(np.float64).ravel()
    return float(a.mean()) if a.size else float("nan")


def failure_rate(nmes: Any, threshold: float = 0.08) -> float:
    """Fraction of faces whose NME exceeds ``threshold`` (0.08 and 0.10 in reports).

    A NaN NME (no landmarks found) counts as a failure. Returns NaN for an empty list.
    """
    a = _to_numpy(nmes).astype(np.float64).ravel()
    if not a.size:
        return float("nan")
    failed = np.isnan(a) | (a > threshold)
    return float(failed.mean())


# --------------------------------------------------------------------------- masks


def _hw(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2:
        raise InputError(f"mask: image shape {tuple(shape)} has fewer than two dimensions")
    return int(shape[0]), int(shape[1])


def face_mask(shape: Sequence[int], box: Any) -> np.ndarray:
    """A rectangular face mask.

    Args:
        shape: the image shape ``(H, W, ...)``.
        box: ``(4,)`` ``x1, y1, x2, y2``; the pixels whose centres lie in ``[x1, x2) x [y1, y2)``
            are set (an integer box of width ``x2 - x1`` covers exactly that many columns),
            clipped to the image.

    Returns:
        ``(H, W)`` bool.
    """
    h, w = _hw(shape)
    b = _to_numpy(box).astype(np.float64).ravel()
    if b.size != 4 or not np.all(np.isfinite(b)):
        raise InputError(f"face_mask: box {b.tolist()} is not four finite numbers x1 y1 x2 y2")
    x1, y1, x2, y2 = (int(np.ceil(v)) for v in b)
    mask = np.zeros((h, w), dtype=bool)
    mask[max(y1, 0) : max(min(y2, h), 0), max(x1, 0) : max(min(x2, w), 0)] = True
    return mask


def hull_mask(shape: Sequence[int], landmarks: Any) -> np.ndarray:
    """The convex hull of landmarks as a mask: pixels whose centres lie inside the hull or on
    its boundary.

    Args:
        shape: the image shape ``(H, W, ...)``.
        landmarks: ``(K, 2)`` ``(x, y)``, at least 3 points not on one line for a non-empty
            area (degenerate hulls give the pixels on the segment/point).

    Returns:
        ``(H, W)`` bool.
    """
    import cv2

    h, w = _hw(shape)
    pts = _as_points(landmarks, "hull_mask landmarks")
    if pts.ndim != 2 or not len(pts) or not np.all(np.isfinite(pts)):
        raise InputError("hull_mask: landmarks must be a non-empty (K, 2) array of finite numbers")
    mask = np.zeros((h, w), dtype=bool)
    x0, y0 = max(int(np.ceil(pts[:, 0].min())), 0), max(int(np.ceil(pts[:, 1].min())), 0)
    x1, y1 = min(int(np.floor(pts[:, 0].max())), w - 1), min(int(np.floor(pts[:, 1].max())), h - 1)
    if x1 < x0 or y1 < y0:
        return mask
    hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
    inside = np.ones(xs.shape, dtype=bool)
    if len(hull) >= 3:
        # Inside a convex polygon: on the same side of every edge. The hull's orientation
        # decides which side; a small tolerance keeps pixel centres on an edge.
        area2 = np.sum(hull[:, 0] * np.roll(hull[:, 1], -1) - np.roll(hull[:, 0], -1) * hull[:, 1])
        sign = 1.0 if area2 > 0 else -1.0
        for (ax, ay), (bx, by) in zip(hull, np.roll(hull, -1, axis=0), strict=True):
            cross = (bx - ax) * (ys - ay) - (by - ay) * (xs - ax)
            inside &= sign * cross >= -1e-9 * max(1.0, abs(bx - ax) + abs(by - ay))
    else:  # a point or a segment: the pixel centres on it
        a, b = hull[0], hull[-1]
        d = b - a
        length2 = float(d @ d)
        t = np.zeros_like(xs) if length2 == 0 else ((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2
        t = np.clip(t, 0.0, 1.0)
        inside = np.hypot(xs - (a[0] + t * d[0]), ys - (a[1] + t * d[1])) < 1e-9
    mask[y0 : y1 + 1, x0 : x1 + 1] = inside
    return mask


def _as_mask(box_or_mask: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A ``(H, W)`` bool mask from a ``(4,)`` box or an ``(H, W)`` mask (bool or 0/1)."""
    m = _to_numpy(box_or_mask)
    if m.ndim == 1 and m.size == 4:
        return face_mask(shape, m)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != tuple(shape[:2]):
        raise InputError(
            f"{what}: mask shape {m.shape} does not match image shape {tuple(shape[:2])} "
            "(pass a (4,) box or an (H, W) mask)"
        )
    return m.astype(bool)


# --------------------------------------------------------------------------- SSIM


def _gaussian_kernel(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering of each channel with mirror-reflected borders
    (``fedcba|abcdef``, scipy's ``reflect``)."""
    import cv2

    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[:, :, c] = cv2.sepFilter2D(
            np.ascontiguousarray(img[:, :, c]), cv2.CV_64F, kernel, kernel,
            borderType=cv2.BORDER_REFLECT,
        )
    return out


def _check_pair(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: image shapes differ: {a.shape} vs {b.shape}")
    side = 2 * SSIM_RADIUS + 1
    if min(a.shape[:2]) < side:
        raise InputError(f"{what}: images of {a.shape[:2]} are smaller than the {side}x{side} SSIM window")


def ssim_map(original: Any, other: Any, data_range: float = DATA_RANGE) -> np.ndarray:
    """The SSIM map of two images (Wang et al. 2004; see the module docstring).

    Returns:
        ``(H, W, C)`` float64 local SSIM values (borders computed with reflected padding).
    """
    x, y = _as_image(original, "ssim original"), _as_image(other, "ssim other")
    _check_pair(x, y, "ssim")
    k = _gaussian_kernel()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = _filter(x, k), _filter(y, k)
    vx = _filter(x * x, k) - mx * mx
    vy = _filter(y * y, k) - my * my
    cxy = _filter(x * y, k) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def _interior(shape: tuple[int, ...]) -> np.ndarray:
    """Pixels at least half a window away from the border (the ones every mean uses)."""
    m = np.zeros(shape[:2], dtype=bool)
    r = SSIM_RADIUS
    m[r : shape[0] - r, r : shape[1] - r] = True
    return m


def ssim(original: Any, other: Any, data_range: float = DATA_RANGE) -> float:
    """Whole-image SSIM: the SSIM map's mean over the interior pixels, averaged over channels.

    Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, channel_axis=-1)``.
    """
    s = ssim_map(original, other, data_range)
    return float(s[_interior(s.shape)].mean())


def mask_ssim(
    original: Any,
    adversarial: Any,
    box_or_mask: Any,
    variant: Literal["masked-image", "mask-mean"] = "masked-image",
    data_range: float = DATA_RANGE,
) -> float:
    """SSIM_I: structural similarity of the face region (mask-SSIM, Ma et al. 2017).

    Args:
        original, adversarial: images (see the module docstring), same shape.
        box_or_mask: a ``(4,)`` face box ``x1, y1, x2, y2`` (see :func:`face_mask`) or an
            ``(H, W)`` bool / 0-1 mask (e.g. :func:`hull_mask`).
        variant: ``"masked-image"`` (the paper's): whole-image SSIM of both images multiplied
            by the mask; ``"mask-mean"``: the SSIM map averaged over the mask's pixels.

    Returns:
        A float in ``[-1, 1]``.

    Raises:
        InputError: shapes disagree, or (``"mask-mean"``) the mask has no pixel away from the
            image border.
        SpecError: an unknown variant.
    """
    x, y = _as_image(original, "mask_ssim original"), _as_image(adversarial, "mask_ssim adversarial")
    _check_pair(x, y, "mask_ssim")
    mask = _as_mask(box_or_mask, x.shape, "mask_ssim")
    if variant == "masked-image":
        m = mask[:, :, None].astype(np.float64)
        return ssim(x * m, y * m, data_range)
    if variant == "mask-mean":
        sel = mask & _interior(x.shape)
        if not sel.any():
            raise InputError(
                f"mask_ssim: the mask has no pixel at least {SSIM_RADIUS} px inside the image"
            )
        return float(ssim_map(x, y, data_range)[sel].mean())
    raise SpecError(f"mask_ssim: unknown variant {variant!r} (use 'masked-image' or 'mask-mean')")


# --------------------------------------------------------------------------- PSNR


def psnr(a: Any, b: Any, mask: Any = None, data_range: float = DATA_RANGE) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``.

    Args:
        a, b: images (see the module docstring), same shape.
        mask: ``None`` (all pixels), a ``(4,)`` box or an ``(H, W)`` mask; the MSE is taken
            over the selected pixels and all channels.
        data_range: the peak value (255 for ``0..255`` data).

    Returns:
        PSNR in dB; ``inf`` for identical images.

    Raises:
        InputError: shapes disagree or the mask selects no pixel.
    """
    x, y = _as_image(a, "psnr a"), _as_image(b, "psnr b")
    if x.shape != y.shape:
        raise InputError(f"psnr: image shapes differ: {x.shape} vs {y.shape}")
    diff2 = (x - y) ** 2
    if mask is not None:
        sel = _as_mask(mask, x.shape, "psnr")
        if not sel.any():
            raise InputError("psnr: the mask selects no pixel")
        diff2 = diff2[sel]
    mse = float(diff2.mean())
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


# SSIM on large images is costly (a 1920x1080 frame takes seconds per call); the face-region
# SSIMs below compute the SSIM map on a crop around the face and give exactly the full-image
# value (tests/test_evaluation.py checks the equality against lbcore.metrics / synthesis).


def ssim_window_margin() -> int:
    # Two window radii plus one: every pixel that a window reaching outside the crop (or its
    # mirror image at the crop's edge) could see is zero in both masked images.
    return 2 * SSIM_RADIUS + 1


def clip_region(shape: Sequence[int], x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    h, w = int(shape[0]), int(shape[1])
    return (max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0),
            min(int(math.ceil(x1)) + 1, w), min(int(math.ceil(y1)) + 1, h))


def interior_count(h: int, w: int) -> int:
    return max(h - 2 * SSIM_RADIUS, 0) * max(w - 2 * SSIM_RADIUS, 0)


def box_region(shape: Sequence[int], box: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    return clip_region(shape, box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin)


def uncrop_masked_ssim(value: float, crop_hw: tuple[int, int], full_hw: tuple[int, int]) -> float:
    """The whole-image masked SSIM from the same SSIM taken on a crop that holds the mask with
    :func:`ssim_window_margin` to spare: outside the mask's neighbourhood both masked images are
    zero and the SSIM map is exactly 1, so only the count of interior pixels differs."""
    n_crop, n_full = interior_count(*crop_hw), interior_count(*full_hw)
    if n_full == 0 or n_crop == 0:
        return float("nan")
    return 1.0 - (1.0 - value) * n_crop / n_full


def region_mask_ssim(original: np.ndarray, other: np.ndarray, box: np.ndarray,
                     variant: Literal["masked-image", "mask-mean"] = "masked-image") -> float:
    """:func:`lbcore.metrics.mask_ssim` with a ``(4,)`` box, computed on a crop (exact).

    Args:
        original, other: ``(H, W, 3)`` images.
        box: ``(4,)`` x1, y1, x2, y2.
        variant: as :func:`lbcore.metrics.mask_ssim`.
    """
    x0, y0, x1, y1 = box_region(original.shape, box, ssim_window_margin())
    if min(x1 - x0, y1 - y0) < 2 * ssim_window_margin():
        return float(mask_ssim(original, other, box, variant=variant))
    shifted = np.asarray(box, dtype=np.float64) - [x0, y0, x0, y0]
    a, b = original[y0:y1, x0:x1], other[y0:y1, x0:x1]
    if variant == "mask-mean":
        # Box pixels see only crop pixels; but the full image's border pixels are left out of
        # every mean, so the crop may only drop those where it shares the image's border.
        h, w = original.shape[:2]
        sel = face_mask(a.shape, shifted)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        r = SSIM_RADIUS
        sel &= (ys >= r) & (ys < h - r) & (xs >= r) & (xs < w - r)
        if not sel.any():
            return float(mask_ssim(original, other, box, variant=variant))
        return float(ssim_map(a, b)[sel].mean())
    value = float(mask_ssim(a, b, shifted, variant="masked-image"))
    return uncrop_masked_ssim(value, (y1 - y0, x1 - x0), original.shape[:2])


# --------------------------------------------------------------------------- face-region SSIM

FACE_SSIM_SIZE = 256
"""Side of the crop the face-region SSIMs resample both images into."""


def box_matrix(box: Any, size: int = FACE_SSIM_SIZE) -> np.ndarray:
    """The ``(2, 3)`` crop-to-image matrix that resamples a ``(4,)`` box ``x1, y1, x2, y2``
    (the pixels :func:`face_mask` selects) into a ``size`` x ``size`` crop (each axis scaled on
    its own)."""
    b = _to_numpy(box).astype(np.float64).ravel()
    if b.size != 4 or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise InputError(f"box_matrix: box {b.tolist()} is not four finite numbers x1 < x2, y1 < y2")
    sx, sy = (b[2] - b[0]) / size, (b[3] - b[1]) / size
    # crop pixel u covers [u - 0.5, u + 0.5); it maps onto [x1 - 0.5 + u sx, x1 - 0.5 + (u + 1) sx)
    return np.array([[sx, 0.0, b[0] - 0.5 + 0.5 * sx], [0.0, sy, b[1] - 0.5 + 0.5 * sy]])


def resample(image: Any, matrix: np.ndarray, size: int = FACE_SSIM_SIZE) -> np.ndarray:
    """``image`` (``(H, W)`` or ``(H, W, C)``) sampled on a ``size`` x ``size`` grid: crop pixel
    ``(u, v)`` takes image point ``matrix @ (u, v, 1)`` (bilinear; outside the image, the edge
    pixel)."""
    import cv2

    img = _to_numpy(image)
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    return np.asarray(cv2.warpAffine(img, np.asarray(matrix, dtype=np.float64), (size, size),
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE))


def crop_ssim(original: Any, other: Any, matrix: np.ndarray, size: int = FACE_SSIM_SIZE,
              weight: Any = None) -> float:
    """SSIM of two images on the same resampled face crop.

    Args:
        original, other: images of the same shape (see the module docstring).
        matrix: ``(2, 3)`` crop-to-image matrix (:func:`box_matrix`, or a face alignment).
        size: crop side.
        weight: ``None`` (every interior crop pixel counts the same) or a ``(size, size)``
            crop-space weight map (e.g. blend masks resampled with :func:`resample`).

    Returns:
        The SSIM map's (weighted) mean over the crop's interior pixels, averaged over channels.

    Raises:
        InputError: shapes disagree or the weights are zero everywhere inside.
    """
    x, y = _as_image(original, "crop_ssim original"), _as_image(other, "crop_ssim other")
    if x.shape != y.shape:
        raise InputError(f"crop_ssim: image shapes differ: {x.shape} vs {y.shape}")
    a = resample(x, matrix, size).reshape(size, size, -1).astype(np.float64)
    b = resample(y, matrix, size).reshape(size, size, -1).astype(np.float64)
    s = ssim_map(a, b).mean(axis=2)
    inner = _interior(s.shape)
    if weight is None:
        return float(s[inner].mean())
    w = np.clip(_to_numpy(weight).astype(np.float64), 0.0, None)
    if w.shape != (size, size):
        raise InputError(f"crop_ssim: weight of shape {w.shape}, need ({size}, {size})")
    total = float(w[inner].sum())
    if total <= 0:
        raise InputError("crop_ssim: the weights are zero everywhere inside the crop")
    return float((s * w)[inner].sum() / total)


# --------------------------------------------------------------------------- visibility


def edge_band(clean: Any, adv: Any, band: int = 4) -> float | None:
    """Mean absolute change (grey levels, averaged over channels) in the outermost ``band`` pixels
    of the filled region where anything changed: a hard-edged perturbation shows here. None when
    nothing changed."""
    import cv2

    a, b = _as_image(clean, "clean"), _as_image(adv, "adversarial")
    if a.shape != b.shape:
        raise InputError(f"edge_band: image shapes differ: {a.shape} vs {b.shape}")
    d = np.abs(b - a).mean(axis=2)
    changed = (d > 0).astype(np.uint8)
    if not changed.any():
        return None
    closed = cv2.morphologyEx(changed, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    region = np.zeros_like(closed)
    cv2.drawContours(region, contours, -1, 1, thickness=-1)
    inner = cv2.erode(region, np.ones((2 * band + 1, 2 * band + 1), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0)
    ring = (region > 0) & (inner == 0)
    return float(d[ring].mean()) if ring.any() else None
