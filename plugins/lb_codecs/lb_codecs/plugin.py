"""The ``lbcore`` entry point of lb-codecs: degradation factories and the ``lb degrade`` command.

Factories are cheap: torch, OpenCV and PyAV are imported only when a stage is built. The
factories' annotated keyword parameters are the spec keys (``jpeg:quality=50``,
``h264:crf=28,preset=fast``, ``diffjpeg:quality_range=50:95``).
"""

from __future__ import annotations

from typing import Any, Literal

from lbcore import hookimpl
from lbcore.errors import SpecError

Subsampling = Literal["420", "422", "444"]
Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                 "veryslow", "placebo"]
Container = Literal["mp4", "avi", "mkv"]


# -- evaluation stages: real codecs ------------------------------------------------------
def jpeg(quality: int = 75, subsampling: Subsampling = "420") -> Any:
    """OpenCV JPEG round trip at a quality (paper: Q75, Q50); 4:2:0 chroma as OpenCV's default."""
    from lb_codecs.stages import JPEG

    return JPEG(quality=quality, subsampling=subsampling)


def mpeg4(bitrate: int | None = None, qscale: int | None = None, gop: int = 12, fps: float = 30.0,
          container: Container = "mp4") -> Any:
    """MPEG-4 Part 2 (mp4v) video round trip; default bitrate as OpenCV's writer (2*fps*W*H)."""
    from lb_codecs.stages import VideoCompression
    from lb_codecs.video import codec_chain

    return VideoCompression(codec_chain("mpeg4", bitrate=bitrate, qscale=qscale, gop=gop, container=container),
                            fps=fps, name="mpeg4")


def h264(crf: int = 23, preset: Preset = "medium", fps: float = 30.0, container: Container = "mp4") -> Any:
    """H.264 (libx264, yuv420p) video round trip at a constant rate factor and preset."""
    from lb_codecs.stages import VideoCompression
    from lb_codecs.video import codec_chain

    return VideoCompression(codec_chain("h264", crf=crf, preset=preset, container=container), fps=fps, name="h264")


def c(fps: float = 30.0) -> Any:
    """The paper's C: frames written to an MPEG-4 video (OpenCV mp4v settings) and decoded."""
    from lb_codecs.stages import VideoCompression
    from lb_codecs.video import codec_chain

    return VideoCompression(codec_chain("c"), fps=fps, name="c")


def c2(fps: float = 30.0, crf: int = 23, preset: Preset = "medium") -> Any:
    """The paper's C2: the C video re-encoded with H.264 (libx264 crf 23, preset medium)."""
    from lb_codecs.stages import VideoCompression
    from lb_codecs.video import codec_chain

    return VideoCompression(codec_chain("c2", crf=crf, preset=preset), fps=fps, name="c2")


def resize(scale: float = 0.5) -> Any:
    """Downscale by a factor (anti-aliased) and scale back to the original size."""
    from lb_codecs.stages import Resize

    if not 0.01 <= scale <= 4.0:
        raise SpecError(f"resize: scale={scale} must lie in [0.01, 4]")
    return Resize(scale=scale)


def blur(sigma: float = 1.0) -> Any:
    """Gaussian blur with a standard deviation in pixels."""
    from lb_codecs.stages import GaussianBlur

    if not 0.05 <= sigma <= 50.0:  # the kernel grows with sigma: 50 px is already a huge blur
        raise SpecError(f"blur: sigma={sigma} must lie in [0.05, 50]")
    return GaussianBlur(sigma=sigma)


def noise(std: float = 2.0, seed: int | None = None) -> Any:
    """Additive Gaussian noise (std on the 0..255 scale), clipped to [0, 255]."""
    from lb_codecs.stages import GaussianNoise

    return GaussianNoise(std=std, seed=seed)


# -- attack-time stages: differentiable ---------------------------------------------------
def _parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError(text)
        return int(lo), int(hi)
    except ValueError:
        raise SpecError(f"diffjpeg: quality_range must be MIN:MAX (e.g. 50:95), got {text!r}") from None


def diffjpeg(quality: int = 75, quality_range: str | None = None, min_quality: int | None = None,
             max_quality: int | None = None, rounding: Literal["ste", "cubic"] = "ste",
             subsampling: Subsampling = "420") -> Any:
    """Differentiable JPEG (DCT, IJG tables, ste/cubic rounding); a quality range draws one per call (EOT)."""
    from lb_codecs.stages import DiffJPEG

    rng: tuple[int, int] | None = None
    if quality_range is not None:
        if min_quality is not None or max_quality is not None:
            raise SpecError("diffjpeg: give quality_range or min_quality/max_quality, not both")
        rng = _parse_range(quality_range)
    elif min_quality is not None or max_quality is not None:
        rng = (min_quality if min_quality is not None else 1, max_quality if max_quality is not None else 100)
    return DiffJPEG(quality=quality, quality_range=rng, rounding=rounding, subsampling=subsampling)


def st_jpeg(quality: int = 75, subsampling: Subsampling = "420") -> Any:
    """Straight-through OpenCV JPEG: real codec forward, identity backward."""
    from lb_codecs.stages import StraightThrough

    return StraightThrough(jpeg(quality=quality, subsampling=subsampling))


def st_mpeg4(bitrate: int | None = None, qscale: int | None = None, gop: int = 12, fps: float = 30.0,
             container: Container = "mp4") -> Any:
    """Straight-through MPEG-4: real codec forward (batch = one clip), identity backward."""
    from lb_codecs.stages import StraightThrough

    return StraightThrough(mpeg4(bitrate=bitrate, qscale=qscale, gop=gop, fps=fps, container=container))


def st_h264(crf: int = 23, preset: Preset = "medium", fps: float = 30.0, container: Container = "mp4") -> Any:
    """Straight-through H.264: real codec forward (batch = one clip), identity backward."""
    from lb_codecs.stages import StraightThrough

    return StraightThrough(h264(crf=crf, preset=preset, fps=fps, container=container))


def st_c(fps: float = 30.0) -> Any:
    """Straight-through C (MPEG-4): real codec forward, identity backward."""
    from lb_codecs.stages import StraightThrough

    return StraightThrough(c(fps=fps))


def st_c2(fps: float = 30.0, crf: int = 23, preset: Preset = "medium") -> Any:
    """Straight-through C2 (MPEG-4 then H.264): real codecs forward, identity backward."""
    from lb_codecs.stages import StraightThrough

    return StraightThrough(c2(fps=fps, crf=crf, preset=preset))


STAGES: dict[str, tuple[Any, dict[str, Any]]] = {
    "jpeg": (jpeg, {"differentiable": False, "video": False}),
    "mpeg4": (mpeg4, {"differentiable": False, "video": True}),
    "h264": (h264, {"differentiable": False, "video": True}),
    "c": (c, {"differentiable": False, "video": True}),
    "c2": (c2, {"differentiable": False, "video": True}),
    "resize": (resize, {"differentiable": True, "video": False}),
    "blur": (blur, {"differentiable": True, "video": False}),
    "noise": (noise, {"differentiable": True, "video": False}),
    "diffjpeg": (diffjpeg, {"differentiable": True, "video": False}),
    "st-jpeg": (st_jpeg, {"differentiable": True, "video": False}),
    "st-mpeg4": (st_mpeg4, {"differentiable": True, "video": True}),
    "st-h264": (st_h264, {"differentiable": True, "video": True}),
    "st-c": (st_c, {"differentiable": True, "video": True}),
    "st-c2": (st_c2, {"differentiable": True, "video": True}),
}
"""Every stage: its factory and what ``lb list`` may show (the built stage carries the same flags)."""


@hookimpl
def register_degradations(register: Any) -> None:
    for name, (factory, meta) in STAGES.items():
        register(name, factory, **meta)


@hookimpl
def register_commands(cli: Any) -> None:
    from lb_codecs.cli import degrade

    cli.add_command(degrade)
