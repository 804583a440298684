"""Real image compression with OpenCV, on ``uint8`` RGB arrays (the paper's Q75 / Q50)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from lb_codecs.backends import EncoderMissingError, require_cv2

__all__ = ["jpeg_roundtrip", "psnr", "Subsampling", "SUBSAMPLING_FACTORS"]

Subsampling = Literal["420", "422", "444"]

# OpenCV's IMWRITE_JPEG_SAMPLING_FACTOR values (luma h/v factors, then the two chroma
# ones). OpenCV's default is 4:2:0 (0x221111), so ``subsampling="420"`` reproduces
# ``cv2.imwrite(..., [IMWRITE_JPEG_QUALITY, q])`` byte for byte.
SUBSAMPLING_FACTORS = {"420": 0x221111, "422": 0x211111, "444": 0x111111}


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    return rgb


def jpeg_roundtrip(rgb: np.ndarray, quality: int = 75, subsampling: Subsampling = "420") -> np.ndarray:
    """Encode an image as JPEG with OpenCV and decode it again (Sec. IV-C1 of the paper).

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB image.
        quality: JPEG quality 1..100 (OpenCV's ``IMWRITE_JPEG_QUALITY``; the paper uses 75, 50).
        subsampling: chroma subsampling; ``"420"`` is OpenCV's default.

    Returns:
        ``(H, W, 3)`` uint8 RGB, the decoded image.
    """
    cv2 = require_cv2()
    rgb = _check_rgb(rgb)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    if subsampling != "420":  # leave OpenCV's default untouched
        params += [int(cv2.IMWRITE_JPEG_SAMPLING_FACTOR), SUBSAMPLING_FACTORS[subsampling]]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise EncoderMissingError(f"OpenCV failed to encode a {rgb.shape[1]}x{rgb.shape[0]} JPEG")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 arrays (``inf`` when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(255.0**2 / mse)
