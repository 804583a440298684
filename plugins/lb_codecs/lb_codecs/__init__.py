"""Real image/video codecs and their differentiable stand-ins for Landmark Breaker.

The paper (Sec. IV-C) tests whether perturbations survive OpenCV JPEG at quality 75 and 50
(Q75, Q50) and video compression: frames written to an MPEG-4 video (C), and that video
re-encoded with H.264 (C2). This distribution registers those evaluation stages with the real
codecs (``jpeg``, ``mpeg4``, ``h264``, ``c``, ``c2``, plus ``resize``, ``blur``, ``noise``), and
attack-time stages that gradients can pass through (``diffjpeg`` and the straight-through
``st-*`` stages), so that :func:`lbcore.attack` can optimise through compression (EOT).

Importing this package is cheap: OpenCV, PyAV and torch load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "jpeg_roundtrip": "lb_codecs.image",
    "psnr": "lb_codecs.image",
    "video_roundtrip": "lb_codecs.video",
    "VideoCodec": "lb_codecs.video",
    "diff_jpeg": "lb_codecs.diffjpeg",
    "jpeg_quant_tables": "lb_codecs.diffjpeg",
    "EncoderMissingError": "lb_codecs.backends",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'lb_codecs' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
