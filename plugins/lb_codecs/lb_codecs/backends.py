"""Access to the codec libraries (OpenCV, PyAV), with one-line errors when one is missing."""

from __future__ import annotations

from typing import Any

from lbcore.errors import LBError

__all__ = ["EncoderMissingError", "require_cv2", "require_av", "require_encoder"]

# What each encoder is, and what to install to get it (for the one-line error).
_ENCODER_HELP = {
    "mpeg4": ("MPEG-4 Part 2", "pip install av (the PyAV wheels bundle FFmpeg's mpeg4 encoder)"),
    "libx264": ("H.264", "pip install av (the PyAV wheels bundle libx264; no OpenCV wheel encodes H.264)"),
    "ffv1": ("FFV1 lossless", "pip install av (the PyAV wheels bundle FFmpeg's ffv1 encoder)"),
}


class EncoderMissingError(LBError):
    """A codec library or encoder needed by a degradation is not installed."""

    exit_code = 3


def require_cv2() -> Any:
    """Import OpenCV or raise a one-line :class:`EncoderMissingError`."""
    try:
        import cv2
    except ImportError as err:
        raise EncoderMissingError(
            f"JPEG encoder unavailable: OpenCV cannot be imported ({err}); "
            "install it with: pip install 'opencv-python-headless<5'"
        ) from None
    return cv2


def require_av() -> Any:
    """Import PyAV or raise a one-line :class:`EncoderMissingError`."""
    try:
        import av
    except ImportError as err:
        raise EncoderMissingError(
            f"video codecs unavailable: PyAV cannot be imported ({err}); install it with: pip install av"
        ) from None
    return av


def _encoder_available(name: str) -> bool:
    av = require_av()
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def require_encoder(name: str) -> Any:
    """Return PyAV after checking that it can encode with ``name`` (``mpeg4``, ``libx264``, ...).

    Raises:
        EncoderMissingError: one line naming the encoder and what to install.
    """
    av = require_av()
    if not _encoder_available(name):
        what, install = _ENCODER_HELP.get(name, (name, "install a PyAV build whose FFmpeg has it"))
        raise EncoderMissingError(
            f"video encoder {name!r} ({what}) is not available in this PyAV/FFmpeg build "
            f"(PyAV {getattr(av, '__version__', '?')}); {install}"
        )
    return av
