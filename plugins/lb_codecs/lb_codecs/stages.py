"""Degradation stages on image tensors (the :class:`lbcore.Degradation` contract).

Every stage maps ``(B, 3, H, W)`` float ``[0, 255]`` to the same shape, on the input's device
and dtype. Real codec stages (``jpeg``, ``mpeg4``, ``h264``, ``c``, ``c2``) round the images to
8 bits, run the real encoder and decoder on the CPU and carry no gradient; video stages treat
the batch as consecutive frames of one clip. Straight-through stages (``st-*``) run the real
codec forward and pass the gradient unchanged backward. ``diffjpeg``, ``resize``, ``blur`` and
``noise`` are torch operations and differentiable.

Real codec stages also offer ``apply_frames`` (one ``(n, H, W, 3)`` uint8 array) and ``stream``
(an iterator of such chunks), which ``lb degrade`` uses to process long videos chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lb_codecs.image import Subsampling, jpeg_roundtrip
from lb_codecs.video import VideoCodec, stream_roundtrip
from lbcore.degradation import Degradation

__all__ = [
    "RealCodecStage",
    "JPEG",
    "VideoCompression",
    "StraightThrough",
    "DiffJPEG",
    "Resize",
    "GaussianBlur",
    "GaussianNoise",
    "to_frames",
    "from_frames",
]


def to_frames(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` float ``[0, 255]`` -> ``(B, H, W, 3)`` uint8 on the CPU (rounded)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    x = images.detach().round().clamp(0, 255).to("cpu", torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def from_frames(frames: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` on ``like``'s device and dtype."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return t.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)


class RealCodecStage(Degradation):
    """A stage that runs a real codec on 8-bit frames (no gradient)."""

    differentiable = False

    def apply_frames(self, frames: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """``(n, H, W, 3)`` uint8 RGB -> same."""
        raise NotImplementedError

    def stream(self, chunks: Iterable[np.ndarray], fps: float | Fraction | None = None) -> Iterator[np.ndarray]:
        """Apply the stage to a stream of ``(n, H, W, 3)`` uint8 chunks (images: chunk by chunk)."""
        for chunk in chunks:
            yield self.apply_frames(chunk)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return from_frames(self.apply_frames(to_frames(images)), images)


class JPEG(RealCodecStage):
    """OpenCV JPEG at a quality (the paper's Q75 / Q50), image by image."""

    def __init__(self, quality: int = 75, subsampling: Subsampling = "420") -> None:
        if not 1 <= quality <= 100:
            from lbcore.errors import SpecError

            raise SpecError(f"jpeg: quality must be in 1..100, got {quality}")
        self.quality = int(quality)
        self.subsampling = subsampling

    def apply_frames(self, frames: np.ndarray) -> np.ndarray:
        return np.stack([jpeg_roundtrip(f, self.quality, self.subsampling) for f in frames])

    def __repr__(self) -> str:
        return f"JPEG(quality={self.quality}, subsampling={self.subsampling!r})"


class VideoCompression(RealCodecStage):
    """A real video round trip (MPEG-4, H.264, the paper's C and C2); the batch is one clip."""

    video = True

    def __init__(self, codecs: list[VideoCodec], fps: float = 30.0, name: str = "video") -> None:
        self.codecs = list(codecs)
        self.fps = fps
        self.name = name

    def stream(self, chunks: Iterable[np.ndarray], fps: float | Fraction | None = None) -> Iterator[np.ndarray]:
        return stream_roundtrip(chunks, self.codecs, self.fps if fps is None else fps)

    def apply_frames(self, frames: np.ndarray) -> np.ndarray:
        return np.concatenate(list(stream_roundtrip([frames], self.codecs, self.fps, chunk=max(1, len(frames)))))

    def __repr__(self) -> str:
        return f"VideoCompression({self.name}: {' then '.join(c.describe() for c in self.codecs)}, fps={self.fps})"


class _StraightThroughFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, images: torch.Tensor, stage: RealCodecStage) -> torch.Tensor:  # type: ignore[override]
        return stage(images.detach())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class StraightThrough(Degradation):
    """Straight-through estimator: the real codec forward, the identity backward (BPDA)."""

    differentiable = True

    def __init__(self, stage: RealCodecStage) -> None:
        self.stage = stage
        self.video = stage.video

    def stream(self, chunks: Iterable[np.ndarray], fps: float | Fraction | None = None) -> Iterator[np.ndarray]:
        return self.stage.stream(chunks, fps)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _StraightThroughFn.apply(images, self.stage)

    def __repr__(self) -> str:
        return f"StraightThrough({self.stage!r})"


class DiffJPEG(Degradation):
    """Differentiable JPEG (see :mod:`lb_codecs.diffjpeg`), optionally at a random quality.

    With ``quality_range=(lo, hi)`` every call draws one integer quality per image, uniformly
    in ``lo..hi`` from torch's global generator (which :func:`lbcore.attack` seeds), for
    expectation over transformation.

    ``local_radius``: a pixel's result depends on its own 16-pixel block (luma 8, chroma 16
    with 4:2:0) and, through the chroma upsampling, the next one's edge; a window of the image
    on the block grid gives the same values away from its border (``lb protect`` attacks such
    windows of large photos).
    """

    differentiable = True
    local_radius = 16

    def __init__(self, quality: int = 75, quality_range: tuple[int, int] | None = None,
                 rounding: str = "ste", subsampling: str = "420") -> None:
        from lbcore.errors import SpecError

        for q in (quality, *(quality_range or ())):
            if not 1 <= q <= 100:
                raise SpecError(f"diffjpeg: quality must be in 1..100, got {q}")
        if quality_range is not None and quality_range[0] > quality_range[1]:
            raise SpecError(f"diffjpeg: empty quality range {quality_range[0]}:{quality_range[1]}")
        self.quality = int(quality)
        self.quality_range = quality_range
        self.rounding = rounding
        self.subsampling = subsampling
        self.stochastic = quality_range is not None

    def draw_quality(self, n: int, device: torch.device) -> torch.Tensor:
        if self.quality_range is None:
            return torch.full((1,), float(self.quality), device=device)
        lo, hi = self.quality_range
        return torch.randint(lo, hi + 1, (n,)).float().to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from lb_codecs.diffjpeg import diff_jpeg

        q = self.draw_quality(images.shape[0], images.device)
        return diff_jpeg(images, q, self.rounding, self.subsampling)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        qs = f"{self.quality_range[0]}:{self.quality_range[1]}" if self.quality_range else str(self.quality)
        return f"DiffJPEG(quality={qs}, rounding={self.rounding!r})"


class Resize(Degradation):
    """Downscale by ``scale`` (anti-aliased) and back to the original size, bilinearly."""

    differentiable = True

    def __init__(self, scale: float = 0.5) -> None:
        if scale <= 0:
            from lbcore.errors import SpecError

            raise SpecError(f"resize: scale must be positive, got {scale}")
        self.scale = float(scale)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                              antialias=self.scale < 1)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False,
                             antialias=self.scale > 1).clamp(0, 255)

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale})"


class GaussianBlur(Degradation):
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel radius ``ceil(3 sigma)``,
    mirrored borders as OpenCV's default ``BORDER_REFLECT_101``)."""

    differentiable = True

    def __init__(self, sigma: float = 1.0) -> None:
        if sigma < 0:
            from lbcore.errors import SpecError

            raise SpecError(f"blur: sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return images
        radius = max(1, math.ceil(3 * self.sigma))
        t = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        k = torch.exp(-0.5 * (t / self.sigma) ** 2)
        k = k / k.sum()
        h, w = images.shape[-2:]
        mode = "reflect" if radius < min(h, w) else "replicate"
        x = F.pad(images, (radius, radius, radius, radius), mode=mode)
        c = images.shape[1]
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # separable: rows
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # then columns

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


class GaussianNoise(Degradation):
    """Additive Gaussian noise of standard deviation ``std`` (0..255 scale), clipped."""

    differentiable = True
    stochastic = True

    def __init__(self, std: float = 2.0, seed: int | None = None) -> None:
        if std < 0:
            from lbcore.errors import SpecError

            raise SpecError(f"noise: std must be >= 0, got {std}")
        self.std = float(std)
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=self.generator, dtype=torch.float32)
        return (images + self.std * noise.to(images.device, images.dtype)).clamp(0, 255)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"
