"""DeepFake synthesis for the paper's SSIM_W: align, swap with an autoencoder, warp back, blend.

The paper (Sec. II-A, Fig. 2) measures how much Landmark Breaker degrades a DeepFake by
synthesising one from the original image and one from the adversarial image and comparing
them with SSIM (SSIM_W). This module rebuilds the classic face-swap pipeline that sentence
describes, so SSIM_W can be measured without a pretrained DeepFake model:

1. **Alignment** - a similarity transform (:func:`umeyama`) from the alignment subset of the
   68 iBUG landmarks (eyebrows, eyes, nose, mouth; not the jaw) to a mean-face template
   (:data:`MEAN_FACE_68`), then a square crop with padding (:func:`align_face`).
2. **Swap** - the shared-encoder / per-identity-decoder autoencoder, trained on aligned faces of
   subjects A and B with warping augmentation (:func:`train_autoencoder`). Encoding a face of A
   and decoding with B's decoder swaps the identity.
3. **Warp back and blend** - the inverse transform puts the synthesised crop back into the
   image (``cv2.warpAffine``); a mask made from the landmarks' convex hull (eroded, feathered)
   blends it in; optional colour transfer (mean/std in LAB) matches the target's skin tone.

The landmarks are inputs: a DeepFake pipeline gets them from a (possibly attacked) extractor,
and :func:`ssim_w` feeds it the clean landmarks for the original image and the adversarial
landmarks for the adversarial one, plus controls that separate the effect of broken alignment
from the effect of the perturbed pixels.

Conventions: images are ``(H, W, 3)`` ``uint8`` RGB numpy arrays (a ``(3, H, W)`` or
``(1, 3, H, W)`` float tensor in ``[0, 255]`` is accepted and converted); landmarks are
``(68, 2)`` or ``(98, 2)`` ``(x, y)`` in image pixels, pixel centres at integers. The 2x3
matrices returned here follow the core's crop convention: they map crop pixel ``(u, v)`` to
image pixel ``(x, y)``.

torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from lbcore.errors import InputError, WeightsError
from lbcore.schemes import WFLW98_TO_IBUG68

__all__ = [
    "ALIGN_POINTS",
    "MEAN_FACE_68",
    "MIRROR_68",
    "FaceSwapper",
    "SSIM_VARIANTS",
    "WORST_SSIM",
    "SynthesisSSIM",
    "align_face",
    "aligned_ssim",
    "alignment_matrix",
    "build_autoencoder",
    "colour_transfer",
    "face_mask",
    "procrustes_mean_shape",
    "random_warp_pair",
    "region_ssim",
    "ssim_w",
    "swap_problem",
    "template_points",
    "to_ibug68",
    "train_autoencoder",
    "umeyama",
    "warp_back",
]

ALIGN_POINTS: tuple[int, ...] = tuple(range(17, 68))
"""The 68-point indices used for alignment: eyebrows, nose, eyes and mouth - not the jaw,
whose points slide along the contour and would tilt the fit with the head's yaw."""

MIRROR_68: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw
    *range(26, 16, -1),  # eyebrows
    27, 28, 29, 30,  # nose bridge
    35, 34, 33, 32, 31,  # nostrils
    45, 44, 43, 42, 47, 46,  # right eye <- left eye
    39, 38, 37, 36, 41, 40,  # left eye <- right eye
    54, 53, 52, 51, 50, 49, 48,  # outer upper lip
    59, 58, 57, 56, 55,  # outer lower lip
    64, 63, 62, 61, 60,  # inner upper lip
    67, 66, 65,  # inner lower lip
)
"""Index of each 68-point landmark's mirror image under a horizontal flip."""

# The mean face, in a unit square: the alignment subset (ALIGN_POINTS) spans [0, 1] along its
# longer side and is centred along the shorter one; jaw points may fall outside. Computed once by
# `procrustes_mean_shape` (generalised Procrustes analysis: each shape centred and scaled on the
# alignment subset, similarity-aligned to the running mean until it stops changing; every shape
# also enters mirrored, so the template is left-right symmetric; the result is rotated so the
# eye centres are level) over the 47 faces with 68-point markup in ../shared/data: the 4
# human-annotated faces68/*.pts and the 43 faces of dlib_faces/{training,testing}_with_face_
# landmarks.xml. tests/test_synthesis.py recomputes it from those files and checks these numbers.
MEAN_FACE_68: tuple[tuple[float, float], ...] = (
    (-0.1423, 0.2847), (-0.1368, 0.4549), (-0.1216, 0.6217), (-0.0881, 0.7869),
    (-0.0217, 0.9391), (0.0830, 1.0680), (0.2074, 1.1774), (0.3451, 1.2662),
    (0.5000, 1.2919), (0.6549, 1.2662), (0.7926, 1.1774), (0.9170, 1.0680),
    (1.0217, 0.9391), (1.0881, 0.7869), (1.1216, 0.6217), (1.1368, 0.4549),
    (1.1423, 0.2847), (0.0000, 0.1322), (0.0717, 0.0590), (0.1741, 0.0302),
    (0.2831, 0.0395), (0.3872, 0.0811), (0.6128, 0.0811), (0.7169, 0.0395),
    (0.8259, 0.0302), (0.9283, 0.0590), (1.0000, 0.1322), (0.5000, 0.2221),
    (0.5000, 0.3260), (0.5000, 0.4291), (0.5000, 0.5385), (0.3701, 0.6116),
    (0.4325, 0.6364), (0.5000, 0.6570), (0.5675, 0.6364), (0.6299, 0.6116),
    (0.1273, 0.2521), (0.1933, 0.2162), (0.2689, 0.2153), (0.3346, 0.2572),
    (0.2670, 0.2699), (0.1907, 0.2702), (0.6654, 0.2572), (0.7311, 0.2153),
    (0.8067, 0.2162), (0.8727, 0.2521), (0.8093, 0.2702), (0.7330, 0.2699),
    (0.2405, 0.8223), (0.3301, 0.7739), (0.4303, 0.7587), (0.5000, 0.7696),
    (0.5697, 0.7587), (0.6699, 0.7739), (0.7595, 0.8223), (0.6756, 0.9244),
    (0.5762, 0.9635), (0.5000, 0.9698), (0.4238, 0.9635), (0.3244, 0.9244),
    (0.2781, 0.8274), (0.4297, 0.8025), (0.5000, 0.8098), (0.5703, 0.8025),
    (0.7219, 0.8274), (0.5735, 0.8891), (0.5000, 0.8982), (0.4265, 0.8891),
)

Image = np.ndarray


# --------------------------------------------------------------------------- geometry


def to_ibug68(landmarks: Any) -> np.ndarray:
    """``(68, 2)`` float64 landmarks from 68 iBUG or 98 WFLW points (via ``WFLW98_TO_IBUG68``).

    Raises:
        InputError: any other shape.
    """
    pts = _as_numpy(landmarks).astype(np.float64)
    if pts.ndim == 3 and pts.shape[0] == 1:
        pts = pts[0]
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in (68, 98):
        raise InputError(f"landmarks of shape {tuple(pts.shape)}: need (68, 2) iBUG or (98, 2) WFLW points")
    if pts.shape[0] == 98:
        pts = pts[list(WFLW98_TO_IBUG68)]
    if not np.isfinite(pts).all():
        raise InputError("landmarks contain NaN or infinite values")
    return pts


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform from ``src`` to ``dst`` (Umeyama, TPAMI 1991).

    Minimises ``sum ||dst_i - (c R src_i + t)||^2`` over rotation ``R`` (no reflection), scale
    ``c`` and translation ``t``.

    Args:
        src: ``(N, D)`` points.
        dst: ``(N, D)`` corresponding points.
        estimate_scale: if False, ``c = 1`` (a rigid transform).

    Returns:
        ``(D, D + 1)`` matrix ``[c R | t]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[0] < 2:
        raise InputError(f"umeyama needs two (N, D) point sets of equal shape, got {src.shape} and {dst.shape}")
    n, d = src.shape
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    # Flip the last axis when the best orthogonal map would be a reflection.
    sign = np.ones(d)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var_src = float((src_c**2).sum()) / n
    scale = float((s * sign).sum()) / var_src if estimate_scale and var_src > 0 else 1.0
    out = np.zeros((d, d + 1))
    out[:, :d] = scale * rot
    out[:, d] = mu_dst - scale * rot @ mu_src
    return out


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def _invert(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, (-a @ m[:, 2])[:, None]], axis=1)


def procrustes_mean_shape(
    shapes: Sequence[np.ndarray],
    points: Sequence[int] = ALIGN_POINTS,
    mirror: Sequence[int] | None = MIRROR_68,
    iterations: int = 100,
) -> np.ndarray:
    """Mean face of 68-point shapes by generalised Procrustes analysis, in a unit square.

    Args:
        shapes: ``(68, 2)`` landmark sets (any position, scale, rotation).
        points: the subset the similarity fits use (and that spans the unit square).
        mirror: mirror permutation; when given, each shape also enters flipped, which makes
            the mean left-right symmetric.
        iterations: the most alignment rounds.

    Returns:
        ``(68, 2)``: eye centres level, ``points`` spanning ``[0, 1]`` on the longer side and
        centred on the shorter one.
    """
    idx = list(points)
    data = [np.asarray(s, dtype=np.float64) for s in shapes]
    if mirror is not None:
        data += [np.stack([-s[:, 0], s[:, 1]], axis=1)[list(mirror)] for s in data]

    def normalise(s: np.ndarray) -> np.ndarray:
        s = s - s[idx].mean(axis=0)
        return s / np.linalg.norm(s[idx])

    data = [normalise(s) for s in data]
    mean = data[0]
    for _ in range(iterations):
        aligned = [_apply(umeyama(s[idx], mean[idx]), s) for s in data]
        new = normalise(np.mean(aligned, axis=0))
        # Pin the frame to the previous mean so the estimate cannot rotate away.
        new = normalise(_apply(umeyama(new[idx], mean[idx]), new))
        done = np.abs(new - mean).max() < 1e-12
        mean = new
        if done:
            break
    left, right = mean[36:42].mean(axis=0), mean[42:48].mean(axis=0)
    angle = np.arctan2(right[1] - left[1], right[0] - left[0])
    c, s_ = np.cos(-angle), np.sin(-angle)
    mean = mean @ np.array([[c, -s_], [s_, c]]).T
    lo, hi = mean[idx].min(axis=0), mean[idx].max(axis=0)
    extent = (hi - lo).max()
    return (mean - lo) / extent + (1.0 - (hi - lo) / extent) / 2.0


def template_points(size: int, padding: float) -> np.ndarray:
    """The mean face placed in a ``size`` x ``size`` crop.

    The template's unit square plus ``padding`` (a fraction of it) on every side fills the crop
    edge to edge; pixel centres are at integers, so the crop spans ``[-0.5, size - 0.5]``.

    Returns:
        ``(68, 2)`` crop pixel coordinates.
    """
    unit = np.asarray(MEAN_FACE_68, dtype=np.float64)
    return (unit + padding) / (1.0 + 2.0 * padding) * size - 0.5


def alignment_matrix(landmarks: Any, size: int, padding: float) -> np.ndarray:
    """The ``(2, 3)`` crop-to-image matrix of the face-swap alignment of ``landmarks``."""
    pts = to_ibug68(landmarks)
    idx = list(ALIGN_POINTS)
    to_crop = umeyama(pts[idx], template_points(size, padding)[idx])
    return _invert(to_crop)


def align_face(image: Image, landmarks: Any, size: int = 64, padding: float = 0.375) -> tuple[np.ndarray, np.ndarray]:
    """Crop a face aligned to the mean-face template, as face-swap tools do.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        landmarks: ``(68, 2)`` or ``(98, 2)`` image pixel coordinates.
        size: side of the square crop.
        padding: margin around the template's unit square, as a fraction of it (0.375 keeps
            the chin inside the crop).

    Returns:
        ``crop`` ``(size, size, 3)`` uint8 and ``M`` ``(2, 3)`` mapping crop pixels to image
        pixels (``cv2.warpAffine(crop, M, (W, H))`` puts the crop back).
    """
    import cv2

    img = _as_uint8_image(image)
    m = alignment_matrix(landmarks, size, padding)
    crop = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, m


def face_mask(landmarks: Any, m: np.ndarray, size: int, erode: float = 0.03, feather: float = 0.04) -> np.ndarray:
    """Blend mask in crop space: the landmarks' convex hull, eroded, then feathered.

    Args:
        landmarks: ``(68, 2)``/``(98, 2)`` image pixels.
        m: ``(2, 3)`` crop-to-image matrix of the crop.
        size: crop side.
        erode: erosion radius as a fraction of ``size`` (keeps the seam inside the face).
        feather: Gaussian sigma as a fraction of ``size`` (a soft seam).

    Returns:
        ``(size, size)`` float32 in ``[0, 1]``.
    """
    import cv2

    pts = _apply(_invert(m), to_ibug68(landmarks))
    hull_img = np.zeros((size, size), dtype=np.uint8)
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    cv2.fillConvexPoly(hull_img, hull, 255)
    r = int(round(erode * size))
    if r > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        hull_img = np.asarray(cv2.erode(hull_img, kernel))
    out = hull_img.astype(np.float32) / 255.0
    sigma = feather * size
    if sigma > 0:
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), sigma), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def warp_back(crop: np.ndarray, m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Put a crop (or a crop-space mask) back into an ``(H, W)`` image frame with ``M``."""
    import cv2

    h, w = shape
    return cv2.warpAffine(crop, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def colour_transfer(source: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Match ``source``'s per-channel mean and std in LAB to ``reference``'s (Reinhard et al.).

    Statistics are taken where ``mask > 0.5`` when a mask is given. Both are uint8 RGB of the
    same size; returns uint8 RGB.
    """
    import cv2

    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)
    sel = (mask > 0.5) if mask is not None else np.ones(src.shape[:2], dtype=bool)
    if sel.sum() < 4:
        return source.copy()
    s_mean, s_std = src[sel].mean(axis=0), src[sel].std(axis=0) + 1e-6
    r_mean, r_std = ref[sel].mean(axis=0), ref[sel].std(axis=0)
    out = (src - s_mean) / s_std * r_std + r_mean
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _blend(image: np.ndarray, face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    a = mask[..., None]
    out = a * face.astype(np.float32) + (1.0 - a) * image.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- autoencoder


def _upscale(c_in: int, c_out: int) -> Any:
    import torch.nn as nn

    # Sub-pixel upscaling (conv to 4x channels, pixel shuffle), as the classic decoders do.
    return nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 3, padding=1), nn.LeakyReLU(0.1), nn.PixelShuffle(2))


def _downscale(c_in: int, c_out: int) -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.LeakyReLU(0.1))


def build_autoencoder(size: int = 64, width: int = 16, bottleneck: int = 256) -> Any:
    """The classic DeepFake autoencoder: one encoder, decoders ``A`` and ``B``.

    Encoder: four stride-2 5x5 convolutions (``width``, 2x, 4x, 8x channels) to ``size/16``,
    a dense bottleneck of ``bottleneck`` units, a dense layer back to ``size/16`` with
    ``8*width`` channels and one sub-pixel upscale. Each decoder: three sub-pixel upscales
    (``4w``, ``2w``, ``w`` channels) and a 5x5 convolution to RGB with a sigmoid. The classic
    tool is ``size=64, width=128, bottleneck=1024``.

    Returns:
        ``nn.ModuleDict`` with ``encoder``, ``decoder_a``, ``decoder_b``; faces are
        ``(B, 3, size, size)`` in ``[0, 1]``.
    """
    import torch.nn as nn

    if size % 16 or size < 16:
        raise InputError(f"autoencoder size {size}: must be a multiple of 16")
    w, s = width, size // 16
    encoder = nn.Sequential(
        _downscale(3, w), _downscale(w, 2 * w), _downscale(2 * w, 4 * w), _downscale(4 * w, 8 * w),
        nn.Flatten(),
        nn.Linear(8 * w * s * s, bottleneck),
        nn.Linear(bottleneck, 8 * w * s * s),
        nn.Unflatten(1, (8 * w, s, s)),
        _upscale(8 * w, 4 * w),
    )

    def decoder() -> nn.Module:
        return nn.Sequential(
            _upscale(4 * w, 4 * w), _upscale(4 * w, 2 * w), _upscale(2 * w, w),
            nn.Conv2d(w, 3, 5, padding=2), nn.Sigmoid(),
        )

    return nn.ModuleDict({"encoder": encoder, "decoder_a": decoder(), "decoder_b": decoder()})


def random_warp_pair(face: np.ndarray, rng: np.random.Generator, rotation: float = 10.0,
                     zoom: float = 0.05, shift: float = 0.05, flip: float = 0.5,
                     warp: float = 0.02, grid: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The classic training augmentation: a random affine jitter applied to input and target
    alike, then a random grid warp of the input only (the network learns to undo it).

    Args:
        face: ``(S, S, 3)`` uint8 aligned face.
        rng: numpy generator (seeded by the caller).
        rotation: degrees (uniform in ``[-rotation, rotation]``); zoom, shift: fractions.
        flip: probability of a horizontal flip.
        warp: standard deviation of the grid's control-point offsets, as a fraction of ``S``.
        grid: control points per side.

    Returns:
        ``(warped_input, clean_target)``, both ``(S, S, 3)`` uint8.
    """
    import cv2

    s = face.shape[0]
    angle = rng.uniform(-rotation, rotation)
    scale = rng.uniform(1.0 - zoom, 1.0 + zoom)
    tx, ty = rng.uniform(-shift, shift, size=2) * s
    mat = cv2.getRotationMatrix2D(((s - 1) / 2.0, (s - 1) / 2.0), angle, scale)
    mat[:, 2] += (tx, ty)
    target = cv2.warpAffine(face, mat, (s, s), borderMode=cv2.BORDER_REPLICATE)
    if rng.uniform() < flip:
        target = np.ascontiguousarray(target[:, ::-1])
    coarse = rng.normal(0.0, warp * s, size=(grid, grid, 2)).astype(np.float32)
    offsets = np.asarray(cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC))
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
    warped = cv2.remap(target, xs + offsets[..., 0], ys + offsets[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return warped, target


@attrs.define(eq=False)
class FaceSwapper:
    """A trained face-swap model with the pipeline around it.

    Attributes:
        model: the :func:`build_autoencoder` module (on ``device``).
        config: ``size``, ``width``, ``bottleneck``, ``padding`` and the training settings;
            saved as ``config.json`` next to the weights.
        device: where the model runs.
        history: training loss per step (sum of the A and B reconstruction losses).
    """

    model: Any
    config: dict[str, Any]
    device: Any = "cpu"
    history: list[float] = attrs.field(factory=list)

    @property
    def size(self) -> int:
        return int(self.config["size"])

    @property
    def padding(self) -> float:
        return float(self.config["padding"])

    def autoencode(self, crops: np.ndarray, identity: str = "B") -> np.ndarray:
        """Encode aligned faces and decode them as ``identity`` (``"A"`` or ``"B"``).

        Shape: ``(N, S, S, 3)`` uint8 -> ``(N, S, S, 3)`` uint8 (a single ``(S, S, 3)`` too).
        """
        import torch

        single = crops.ndim == 3
        batch = crops[None] if single else crops
        dec = _decoder_name(identity)
        self.model.eval()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            y = self.model[dec](self.model["encoder"](x))
        out = (y.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        return out[0] if single else out

    def reconstruction_loss(self, crops: np.ndarray, identity: str) -> float:
        """Mean absolute error (0..1 scale) of decoding unwarped aligned faces as themselves."""
        out = self.autoencode(crops, identity).astype(np.float32)
        return float(np.abs(out - crops.astype(np.float32)).mean() / 255.0)

    def synthesize(self, image: Any, landmarks: Any, identity: str = "B",
                   colour: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Swap the face at ``landmarks`` into ``identity``: align, autoencode, warp back, blend.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            landmarks: ``(68, 2)``/``(98, 2)`` as the extractor found them.
            identity: decoder to use (``"B"`` swaps A's faces into B).
            colour: match the synthesised face's LAB mean/std to the target face.

        Returns:
            ``(image, mask)``: the DeepFake ``(H, W, 3)`` uint8 and the blend mask ``(H, W)``
            float32 in ``[0, 1]``.
        """
        img = _as_uint8_image(image)
        crop, m = align_face(img, landmarks, self.size, self.padding)
        face = self.autoencode(crop, identity)
        mask_crop = face_mask(landmarks, m, self.size)
        if colour:
            face = colour_transfer(face, crop, mask_crop)
        return self._paste(img, face, mask_crop, m)

    def round_trip(self, image: Any, landmarks: Any, source_landmarks: Any | None = None,
                   size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Identity control: the same pipeline with no autoencoder.

        The face is cropped with the alignment of ``source_landmarks`` (default:
        ``landmarks``), then warped back with the inverse of the alignment of ``landmarks`` and
        blended with the mask of ``landmarks``. With the default this is align, warp back,
        blend: it measures what the pipeline's resampling and blending alone cost, and it does
        not depend on where the landmarks are. With ``source_landmarks`` set to the clean
        landmarks it stands for an ideal model that always outputs the face template-aligned
        (what warping augmentation trains a DeepFake model towards): the result then shows
        what broken alignment alone does to the synthesised face.

        ``size`` is the side of the crop (default: the model's); :func:`ssim_w` uses one twice
        as fine as the image, so the controls show geometry, not resolution loss.

        Returns:
            ``(image, mask)`` as :meth:`synthesize`.
        """
        img = _as_uint8_image(image)
        source = landmarks if source_landmarks is None else source_landmarks
        n = self.size if size is None else int(size)
        face, _ = align_face(img, source, n, self.padding)
        m = alignment_matrix(landmarks, n, self.padding)
        return self._paste(img, face, face_mask(landmarks, m, n), m)

    def _paste(self, img: np.ndarray, face: np.ndarray, mask_crop: np.ndarray,
               m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = img.shape[:2]
        mask = warp_back(mask_crop, m, shape)
        return _blend(img, warp_back(face, m, shape), mask), mask

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``weights.pt`` (a plain state dict) and ``config.json`` into ``directory``."""
        import torch

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        torch.save(state, d / "weights.pt")
        cfg = dict(self.config)
        cfg["final_loss"] = self.history[-1] if self.history else None
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: Any = "cpu") -> FaceSwapper:
        """Load what :meth:`save` wrote (weights loaded with ``weights_only=True``).

        Raises:
            WeightsError: missing or unreadable files, or weights that do not fit the config.
        """
        from lbcore.engine import resolve_device
        from lbcore.weights import extract_state_dict, load_checkpoint, load_state_dict_strict

        d = Path(directory)
        cfg_path, w_path = d / "config.json", d / "weights.pt"
        if not cfg_path.is_file():
            raise WeightsError(f"{cfg_path}: face-swap config not found")
        try:
            cfg = json.loads(cfg_path.read_text())
            size, width, bottleneck = int(cfg["size"]), int(cfg["width"]), int(cfg["bottleneck"])
            float(cfg["padding"])
        except (ValueError, KeyError, TypeError) as err:
            raise WeightsError(f"{cfg_path}: not a face-swap config ({type(err).__name__}: {err})") from None
        model = build_autoencoder(size, width, bottleneck)
        load_state_dict_strict(model, extract_state_dict(load_checkpoint(w_path), w_path), w_path)
        dev = resolve_device(device)
        return cls(model.to(dev).eval(), cfg, dev)


def _decoder_name(identity: str) -> str:
    ident = str(identity).upper()
    if ident not in ("A", "B"):
        raise InputError(f"identity {identity!r}: must be 'A' or 'B'")
    return f"decoder_{ident.lower()}"


def _aligned_faces(faces: Any, size: int, padding: float, name: str) -> np.ndarray:
    """Accept ``(N, S, S, 3)`` aligned crops or a sequence of ``(image, landmarks)`` pairs."""
    if isinstance(faces, np.ndarray) and faces.ndim == 4:
        if faces.shape[1:] != (size, size, 3):
            raise InputError(f"faces {name}: crops of shape {faces.shape[1:]}, expected {(size, size, 3)}")
        return faces.astype(np.uint8)
    crops = [align_face(img, lm, size, padding)[0] for img, lm in faces]
    if not crops:
        raise InputError(f"faces {name}: no faces to train on")
    return np.stack(crops)


def train_autoencoder(
    faces_a: Any,
    faces_b: Any,
    steps: int = 1000,
    size: int = 64,
    width: int = 16,
    seed: int = 0,
    device: Any = "cpu",
    *,
    bottleneck: int = 256,
    padding: float = 0.375,
    batch_size: int = 16,
    lr: float = 5e-4,
    progress: Any = None,
) -> FaceSwapper:
    """Train the shared-encoder / two-decoder DeepFake autoencoder on aligned faces.

    Each step draws a batch of A and a batch of B, augments them with
    :func:`random_warp_pair` (warped input, clean target) and minimises the mean absolute
    reconstruction error of each through its own decoder (Adam, betas 0.5/0.999).

    Args:
        faces_a, faces_b: ``(N, S, S, 3)`` uint8 aligned crops, or sequences of
            ``(image, landmarks)`` pairs that :func:`align_face` crops.
        steps: optimiser steps (0 returns the initialised model).
        size: crop side (a multiple of 16); width, bottleneck: see :func:`build_autoencoder`.
        seed: seeds the initial weights, the batches and the augmentation.
        device: ``cpu``, ``cuda`` or ``auto``.
        progress: optional callable ``(step, loss)`` called after each step.

    Returns:
        A :class:`FaceSwapper` whose ``history`` holds the loss of every step.
    """
    import torch

    from lbcore.engine import resolve_device

    dev = resolve_device(device)
    a = _aligned_faces(faces_a, size, padding, "A")
    b = _aligned_faces(faces_b, size, padding, "B")
    torch.manual_seed(seed)
    model = build_autoencoder(size, width, bottleneck).to(dev)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    cfg: dict[str, Any] = {
        "size": size, "width": width, "bottleneck": bottleneck, "padding": padding,
        "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
        "faces_a": len(a), "faces_b": len(b), "template": "lbcore.apps.synthesis.MEAN_FACE_68",
    }
    history: list[float] = []

    def batch(faces: np.ndarray) -> tuple[Any, Any]:
        pairs = [random_warp_pair(faces[i], rng) for i in rng.integers(0, len(faces), batch_size)]
        x = np.stack([p[0] for p in pairs])
        y = np.stack([p[1] for p in pairs])

        def t(arr: np.ndarray) -> Any:
            return torch.from_numpy(arr).to(dev).permute(0, 3, 1, 2).float() / 255.0

        return t(x), t(y)

    model.train()
    for step in range(steps):
        xa, ya = batch(a)
        xb, yb = batch(b)
        loss_a = (model["decoder_a"](model["encoder"](xa)) - ya).abs().mean()
        loss_b = (model["decoder_b"](model["encoder"](xb)) - yb).abs().mean()
        loss = loss_a + loss_b
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if progress is not None:
            progress(step, history[-1])
    model.eval()
    return FaceSwapper(model, cfg, dev, history)


# --------------------------------------------------------------------------- SSIM_W

SSIM_VARIANTS: tuple[str, ...] = ("aligned", "masked-image", "mask-mean")
"""``aligned`` (the headline): both DeepFakes resampled into the face-swap alignment crop of the
clean landmarks at the swap model's resolution (its ``size``: the resolution the DeepFake is made
at; a finer grid would only add interpolated smoothness, which SSIM's 11-px window scores as
similar), the SSIM map averaged with the union of the two blend masks as weights - where a
DeepFake pipeline looks, the same figure whatever the face's size in the frame. ``masked-image`` (the paper's
mask-SSIM): whole-image SSIM of both images multiplied by the face-box mask - a small face in a
large frame scores near 1 whatever happens inside the box. ``mask-mean``: the SSIM map averaged
inside the face box."""

WORST_SSIM = 0.0
"""The score of a face whose adversarial DeepFake cannot be made (no structural similarity)."""

MIN_FAKE_INSIDE = 0.5
"""A swap whose blend mask lands less than this fraction inside the frame counts as not made."""

NATIVE_CROP_MAX = 1024
"""The largest crop the model-free controls (identity, ideal alignment) resample the face into
(they use twice the face's resolution in the image, at least the model's crop)."""

MIN_LANDMARK_SPREAD = 1.0
"""Alignment points closer than this (RMS distance from their centre, pixels) are degenerate."""

MIN_FAKE_SIDE = 8.0
"""A swap whose aligned crop covers fewer image pixels than this per side counts as not made."""


def swap_problem(landmarks: Any, shape: tuple[int, ...], size: int, padding: float) -> str | None:
    """Why a DeepFake cannot be made from ``landmarks`` in an image of ``shape``, or ``None``.

    A swap cannot be made when the alignment is degenerate (landmarks on one spot, not finite,
    a crop that covers fewer than :data:`MIN_FAKE_SIDE` image pixels per side) or when less than
    :data:`MIN_FAKE_INSIDE` of the blend mask lands inside the frame.
    """
    try:
        pts = to_ibug68(landmarks)
        sel = pts[list(ALIGN_POINTS)]
        spread = float(np.sqrt(((sel - sel.mean(axis=0)) ** 2).sum(axis=1).mean()))
        if not spread >= MIN_LANDMARK_SPREAD:
            return f"degenerate alignment (landmarks within {spread:.2g} px of one point)"
        m = alignment_matrix(pts, size, padding)
    except (InputError, np.linalg.LinAlgError, ValueError) as err:
        return f"degenerate alignment ({err})"
    if not np.isfinite(m).all():
        return "degenerate alignment (not finite)"
    side = float(np.sqrt(abs(np.linalg.det(m[:, :2])))) * size
    if not side >= MIN_FAKE_SIDE:
        return f"degenerate alignment (the face crop covers {side:.2g} px)"
    crop_mask = face_mask(pts, m, size)
    want = float(crop_mask.sum()) * (side / size) ** 2
    if want <= 0:
        return "degenerate alignment (empty blend mask)"
    h, w = int(shape[0]), int(shape[1])
    # the mask's corners far outside the frame would make warping it back huge: measure the
    # part inside from the crop side (crop pixels whose image point lies in the frame)
    vv, uu = np.mgrid[0:size, 0:size]
    uv = np.stack([uu.ravel(), vv.ravel()], axis=1).astype(np.float64)
    xy = _apply(m, uv)
    inside = ((xy[:, 0] >= -0.5) & (xy[:, 0] < w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] < h - 0.5)).reshape(size, size)
    frac = float(crop_mask[inside].sum() / crop_mask.sum())
    if frac < MIN_FAKE_INSIDE:
        return f"fake outside the frame ({100 * frac:.0f}% of it inside)"
    return None


def region_ssim(a: np.ndarray, b: np.ndarray, box_or_mask: Any, variant: str = "masked-image") -> float:
    """SSIM of two uint8 RGB images inside the face region: :func:`lbcore.metrics.mask_ssim`.

    Args:
        a, b: ``(H, W, 3)`` images.
        box_or_mask: ``(4,)`` face box ``x1, y1, x2, y2`` or an ``(H, W)`` mask.
        variant: ``"masked-image"`` (the paper's mask-SSIM) or ``"mask-mean"`` (the SSIM map
            averaged inside the mask: stricter, it does not count the zeros outside the face).
    """
    from lbcore.metrics import mask_ssim

    return float(mask_ssim(a, b, np.asarray(box_or_mask), variant=variant))  # type: ignore[arg-type]


def aligned_ssim(a: np.ndarray, b: np.ndarray, landmarks_clean: Any, masks: Sequence[np.ndarray],
                 padding: float, size: int | None = None) -> float:
    """SSIM of two images on the face-swap alignment crop of ``landmarks_clean``, weighted by
    the union (pixel-wise maximum) of the blend ``masks`` (``(H, W)`` each) resampled into it.

    Args:
        size: crop side (default :data:`lbcore.metrics.FACE_SSIM_SIZE`; :func:`ssim_w` passes
            the swap model's size).
    """
    from lbcore.metrics import FACE_SSIM_SIZE, crop_ssim, resample

    n = FACE_SSIM_SIZE if size is None else int(size)
    m = alignment_matrix(landmarks_clean, n, padding)
    union = np.maximum.reduce([np.asarray(k, dtype=np.float32) for k in masks])
    return crop_ssim(a, b, m, n, resample(union, m, n))


@attrs.frozen
class SynthesisSSIM:
    """SSIM_W and its controls for one face (each SSIM in the record's ``variant``).

    Attributes:
        ssim_w: the paper's SSIM_W: DeepFake of the original with the clean landmarks vs
            DeepFake of the adversarial image with the adversarial landmarks.
        ssim_w_clean_landmarks: control (2): the adversarial image synthesised with the clean
            landmarks - the part of the damage that comes from the perturbed pixels alone.
        ssim_identity: control (1): the identity round trip (no autoencoder) of the original
            with clean landmarks vs of the adversarial image with adversarial landmarks - what
            the pipeline without a model does.
        ssim_alignment: the ideal-model control: the adversarial image cropped with the clean
            alignment (a model that always outputs the template-aligned face) but warped back
            and masked with the adversarial landmarks - the damage broken alignment alone does.
        alignment_shift: mean distance (image pixels) the template's alignment points move
            between the clean and the adversarial alignment.
        alignment_shift_iod: the same divided by the clean inter-ocular (outer corner) distance.
        ssim_w_masked_image: SSIM_W as the paper measures it (whole-image mask-SSIM of the face
            box), computed literally, for comparison.
        ssim_w_clean_pixels: control (3), the complement of (2): the original image synthesised
            with the adversarial landmarks - the part of the damage that comes from the broken
            landmarks alone, with no perturbed pixel in it (:data:`WORST_SSIM` when the swap
            cannot be made).
        failure: why the adversarial DeepFake could not be made (:func:`swap_problem`), or
            ``None``; when set, ``ssim_w``, ``ssim_identity`` and ``ssim_alignment`` are
            :data:`WORST_SSIM`.
        variant: the variant of the SSIM fields (:data:`SSIM_VARIANTS`).
        images: the synthesised images by name (``fake_clean``, ``fake_adv``,
            ``fake_adv_clean_landmarks``, ``identity_clean``, ``identity_adv``,
            ``alignment_adv``), uint8 RGB.
    """

    ssim_w: float
    ssim_w_clean_landmarks: float
    ssim_identity: float
    ssim_alignment: float
    alignment_shift: float
    alignment_shift_iod: float
    ssim_w_masked_image: float = float("nan")
    ssim_w_clean_pixels: float = float("nan")
    failure: str | None = None
    variant: str = "aligned"
    images: dict[str, np.ndarray] = attrs.field(factory=dict, eq=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The figures without the images (for JSON reports)."""
        return {k: v for k, v in attrs.asdict(self).items() if k != "images"}


def ssim_w(
    original_image: Any,
    adv_image: Any,
    landmarks_clean: Any,
    landmarks_adv: Any,
    swapper: FaceSwapper,
    box: Sequence[float],
    identity: str = "B",
    colour: bool = True,
    variant: str = "aligned",
) -> SynthesisSSIM:
    """SSIM_W (paper Fig. 2) with the controls that explain it.

    Args:
        original_image, adv_image: ``(H, W, 3)`` uint8 RGB.
        landmarks_clean: the extractor's landmarks on the original image.
        landmarks_adv: the extractor's landmarks on the adversarial image.
        swapper: the trained face-swap model.
        box: face box ``(x1, y1, x2, y2)`` (the ``masked-image`` and ``mask-mean`` variants).
        identity: the decoder that synthesises (``"B"``: the swap).
        colour: colour transfer in the swap.
        variant: one of :data:`SSIM_VARIANTS` (``aligned``, the default, is the headline).

    Returns:
        A :class:`SynthesisSSIM`. When the clean landmarks cannot make a swap the figures are
        NaN (nothing to compare with); when the adversarial ones cannot, see ``failure``.
    """
    if variant not in SSIM_VARIANTS:
        raise InputError(f"SSIM variant {variant!r}: use one of {', '.join(SSIM_VARIANTS)}")
    orig = _as_uint8_image(original_image)
    adv = _as_uint8_image(adv_image)
    if orig.shape != adv.shape:
        raise InputError(f"original {orig.shape} and adversarial {adv.shape} images differ in size")
    lm_c = to_ibug68(landmarks_clean)
    size, pad = swapper.size, swapper.padding
    iod = float(np.linalg.norm(lm_c[36] - lm_c[45]))
    nan = float("nan")
    problem = swap_problem(lm_c, orig.shape, size, pad)
    if problem is not None:
        return SynthesisSSIM(nan, nan, nan, nan, nan, nan, nan, failure=f"clean landmarks: {problem}",
                             variant=variant)
    fake_clean, mask_clean = swapper.synthesize(orig, lm_c, identity, colour)
    fake_adv_cl, mask_adv_cl = swapper.synthesize(adv, lm_c, identity, colour)
    # the model-free controls at twice the image's resolution: they show geometry, not the
    # resampling loss of a small crop
    native = int(np.clip(np.ceil(2 * np.sqrt(abs(np.linalg.det(alignment_matrix(lm_c, size, pad)[:, :2]))) * size),
                         size, NATIVE_CROP_MAX))
    ident_clean, mask_ident = swapper.round_trip(orig, lm_c, size=native)
    box_arr = np.asarray(box, dtype=np.float64)

    def score(a: np.ndarray, b: np.ndarray, masks: Sequence[np.ndarray]) -> float:
        if variant == "aligned":
            return aligned_ssim(a, b, lm_c, masks, pad, size)
        return region_ssim(a, b, box_arr, variant)

    clean_landmarks = score(fake_clean, fake_adv_cl, (mask_clean, mask_adv_cl))
    images = {"fake_clean": fake_clean, "fake_adv_clean_landmarks": fake_adv_cl, "identity_clean": ident_clean}
    try:
        lm_a = to_ibug68(landmarks_adv)
    except InputError as err:
        lm_a, problem = None, f"degenerate alignment ({err})"
    else:
        problem = swap_problem(lm_a, adv.shape, size, pad)
    if problem is not None or lm_a is None:
        # The DeepFake cannot be made from these landmarks: the worst score, never the
        # untouched image's. The paper's figure compares the clean fake with the adversarial
        # image as it is (what the literal metric would see).
        return SynthesisSSIM(WORST_SSIM, clean_landmarks, WORST_SSIM, WORST_SSIM, nan, nan,
                             region_ssim(fake_clean, adv, box_arr, "masked-image"), ssim_w_clean_pixels=WORST_SSIM,
                             failure=problem, variant=variant, images=images)
    fake_adv, mask_adv = swapper.synthesize(adv, lm_a, identity, colour)
    fake_clean_adv_lm, mask_clean_adv_lm = swapper.synthesize(orig, lm_a, identity, colour)
    ident_adv, mask_ident_adv = swapper.round_trip(adv, lm_a, size=native)
    align_adv, mask_align = swapper.round_trip(adv, lm_a, source_landmarks=lm_c, size=native)
    tmpl = template_points(size, pad)[list(ALIGN_POINTS)]
    shift = np.linalg.norm(
        _apply(alignment_matrix(lm_c, size, pad), tmpl) - _apply(alignment_matrix(lm_a, size, pad), tmpl), axis=1
    ).mean()
    images.update({"fake_adv": fake_adv, "identity_adv": ident_adv, "alignment_adv": align_adv,
                   "fake_clean_adv_landmarks": fake_clean_adv_lm})
    return SynthesisSSIM(
        ssim_w=score(fake_clean, fake_adv, (mask_clean, mask_adv)),
        ssim_w_clean_landmarks=clean_landmarks,
        ssim_identity=score(ident_clean, ident_adv, (mask_ident, mask_ident_adv)),
        ssim_alignment=score(ident_clean, align_adv, (mask_ident, mask_align)),
        alignment_shift=float(shift),
        alignment_shift_iod=float(shift / iod) if iod > 0 else nan,
        ssim_w_masked_image=region_ssim(fake_clean, fake_adv, box_arr, "masked-image"),
        ssim_w_clean_pixels=score(fake_clean, fake_clean_adv_lm, (mask_clean, mask_clean_adv_lm)),
        failure=None,
        variant=variant,
        images=images,
    )


# --------------------------------------------------------------------------- helpers


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_uint8_image(image: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a uint8/float array or a ``(3, H, W)``/``(1, 3, H, W)``
    tensor in ``[0, 255]`` (the core's image contract)."""
    arr = _as_numpy(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"image of shape {tuple(arr.shape)}: need (H, W, 3) RGB")
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)
