"""Real video compression through PyAV (FFmpeg): MPEG-4 Part 2, H.264 (libx264), FFV1.

The paper (Sec. IV-C2) writes the adversarial frames to an MPEG-4 video ("C") and re-encodes
that video with H.264 ("C2"). Here a round trip encodes a sequence of frames into a real
container in a temporary folder, decodes it, and returns the same number of frames, in order,
at the same size. Frames are processed as a stream of chunks (``(n, H, W, 3)`` uint8 arrays), so
a long video never has to sit in memory.

Defaults, chosen to match the paper's tools and to be reproducible:

* ``C`` - MPEG-4 Part 2 (FFmpeg ``mpeg4``, tag ``mp4v`` in an ``.mp4``) with the settings
  OpenCV's ``VideoWriter`` uses for ``mp4v``: target bitrate ``2 * fps * W * H`` bit/s (also the
  tolerance), ``qmin = 3``, one intra frame every 12 frames, no B-frames, yuv420p.
* ``C2`` - the C video decoded and re-encoded with libx264 at FFmpeg's defaults:
  ``crf = 23``, ``preset = medium``, yuv420p.

Every encoder runs single-threaded. MPEG-4 (so C) and FFV1 then give the same bytes for the
same frames; libx264 nearly always does, but not always within one long-lived process (see
:func:`encoder_frame`), so compare H.264 results with a tolerance. Frames of
odd width or height are padded to even by repeating the last column/row (4:2:0 needs even
sizes) and cropped back after decoding.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from typing import Any

import attrs
import numpy as np

from lb_codecs.backends import require_encoder
from lbcore.errors import LBError, SpecError

__all__ = [
    "VideoCodec",
    "codec_chain",
    "encode_chunks",
    "encoder_frame",
    "iter_decoded",
    "stream_roundtrip",
    "video_roundtrip",
    "as_rate",
    "X264_PRESETS",
    "C_GOP",
    "C_QMIN",
    "C2_CRF",
    "C2_PRESET",
]

X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)
C_GOP = 12
"""OpenCV's VideoWriter: one intra frame every twelve frames at most."""
C_QMIN = 3
"""OpenCV's VideoWriter sets ``qmin = 3`` (avoids clipped DCT coefficients)."""
C2_CRF = 23
"""libx264's (and FFmpeg's) default constant rate factor."""
C2_PRESET = "medium"
"""libx264's default preset."""


@attrs.frozen
class VideoCodec:
    """Settings of one real video encode.

    Attributes:
        encoder: FFmpeg encoder name: ``mpeg4``, ``libx264`` or ``ffv1``.
        container: ``mp4``, ``avi`` or ``mkv`` (the temporary file's format).
        bitrate: target bit rate in bit/s (MPEG-4); ``None`` with ``qscale`` unset means
            OpenCV's rule ``2 * fps * W * H``.
        qscale: fixed MPEG-4 quantiser 2..31 (smaller is better); overrides ``bitrate``.
        crf: libx264 constant rate factor 0..51 (smaller is better).
        preset: libx264 preset.
        gop: maximum distance between intra frames (``None``: the encoder's default).
        pix_fmt: the encoder's pixel format.
    """

    encoder: str
    container: str = "mp4"
    bitrate: int | None = None
    qscale: int | None = None
    crf: int | None = None
    preset: str | None = None
    gop: int | None = None
    pix_fmt: str = "yuv420p"

    @property
    def needs_even(self) -> bool:
        return self.pix_fmt in ("yuv420p", "yuvj420p", "nv12")

    def describe(self) -> str:
        parts = [self.encoder]
        for key in ("bitrate", "qscale", "crf", "preset", "gop"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={value}")
        return " ".join(parts)

    def add_stream(self, container: Any, rate: Fraction, width: int, height: int) -> Any:
        """Add and configure this encoder's stream on an open PyAV output container."""
        require_encoder(self.encoder)
        options: dict[str, str] = {}
        if self.encoder == "libx264":
            options["crf"] = str(C2_CRF if self.crf is None else self.crf)
            options["preset"] = self.preset or C2_PRESET
        stream = container.add_stream(self.encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        cc = stream.codec_context
        cc.thread_count = 1  # reproducible bytes (frame-threaded encoders are not deterministic)
        if self.gop is not None:
            cc.gop_size = self.gop
        if self.encoder == "mpeg4":
            cc.max_b_frames = 0
            if self.qscale is not None:
                # qmin = qmax pins every frame to one quantiser (ffmpeg's -q:v equivalent).
                cc.qmin = cc.qmax = int(self.qscale)
            else:
                rule = 2.0 * float(rate) * width * height  # OpenCV's mp4v writer, see module doc
                bits = int(self.bitrate) if self.bitrate is not None else int(min(rule, 2**31 - 1))
                cc.bit_rate = bits
                cc.bit_rate_tolerance = bits
                cc.qmin = C_QMIN
        return stream


def codec_chain(
    codec: str,
    *,
    bitrate: int | None = None,
    qscale: int | None = None,
    crf: int | None = None,
    preset: str | None = None,
    gop: int | None = None,
    container: str | None = None,
) -> list[VideoCodec]:
    """The encodes a named codec stands for: ``mpeg4``, ``h264``, ``ffv1``, ``c`` or ``c2``.

    ``c`` is one MPEG-4 encode with OpenCV's settings; ``c2`` is that followed by an H.264
    encode of the decoded C frames (``crf``/``preset`` apply to the H.264 pass).
    """
    if preset is not None and preset not in X264_PRESETS:
        raise SpecError(f"unknown x264 preset {preset!r} (valid: {', '.join(X264_PRESETS)})")
    if qscale is not None and not 1 <= qscale <= 31:
        raise SpecError(f"MPEG-4 qscale must be in 1..31, got {qscale}")
    if crf is not None and not 0 <= crf <= 51:
        raise SpecError(f"H.264 crf must be in 0..51, got {crf}")
    if container is not None and container not in ("mp4", "avi", "mkv"):
        raise SpecError(f"unknown container {container!r} (valid: mp4, avi, mkv)")
    mp4 = VideoCodec("mpeg4", container or "mp4", bitrate=bitrate, qscale=qscale, gop=C_GOP if gop is None else gop)
    x264 = VideoCodec("libx264", container or "mp4", crf=C2_CRF if crf is None else crf,
                      preset=preset or C2_PRESET, gop=gop)
    if codec == "mpeg4":
        return [mp4]
    if codec == "h264":
        return [x264]
    if codec == "c":
        return [VideoCodec("mpeg4", container or "mp4", gop=C_GOP)]
    if codec == "c2":
        return [VideoCodec("mpeg4", "mp4", gop=C_GOP), x264]
    if codec == "ffv1":
        return [VideoCodec("ffv1", "mkv", pix_fmt="bgr0")]
    raise SpecError(f"unknown video codec {codec!r} (valid: mpeg4, h264, c, c2, ffv1)")


def as_rate(fps: float | Fraction | str) -> Fraction:
    """A frame rate as a fraction (``25`` -> 25, ``29.97`` -> 2997/100, ``30000/1001`` as a float -> 30000/1001)."""
    rate = Fraction(fps) if isinstance(fps, (Fraction, int)) else Fraction(str(fps))
    if rate <= 0:
        raise SpecError(f"frame rate must be positive, got {fps}")
    if rate.denominator > 1001:  # MPEG-4 Part 2 allows time-base denominators up to 65535
        rate = rate.limit_denominator(1001)
    return rate


def _pad_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _as_chunk(chunk: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.asarray(chunk)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (n, H, W, 3) uint8 RGB frames, got {arr.dtype} {arr.shape}")
    return arr


def encoder_frame(av: Any, rgb: np.ndarray, pix_fmt: str, pts: int, rate: Fraction) -> Any:
    """A PyAV frame of ``rgb`` converted to the encoder's pixel format, with ``pts`` and
    ``time_base`` set.

    Both details matter for reproducibility: with the time base left unset, or the pixel
    conversion left to PyAV's encoder, libx264 often gave different bytes for the same frames
    from run to run (PyAV 18). Even so, libx264 inside one long-lived process is not always
    bit-exact (a few runs in a dozen differ by a few grey levels); MPEG-4 and FFV1 are.
    """
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    if pix_fmt != "rgb24":
        vf = vf.reformat(format=pix_fmt)
    vf.pts = pts
    vf.time_base = 1 / rate
    return vf


def encode_chunks(
    chunks: Iterable[np.ndarray], path: str | os.PathLike[str], codec: VideoCodec, fps: float | Fraction
) -> tuple[int, tuple[int, int]]:
    """Encode chunks of ``(n, H, W, 3)`` uint8 RGB frames into a video file.

    Returns:
        ``(frames written, (H, W))`` - the size before any even-padding.
    """
    av = require_encoder(codec.encoder)
    rate = as_rate(fps)
    count = 0
    size: tuple[int, int] | None = None
    fmt = {"mp4": "mp4", "avi": "avi", "mkv": "matroska"}[codec.container]
    with av.open(os.fspath(path), "w", format=fmt) as out:
        stream = None
        for chunk in chunks:
            arr = _as_chunk(chunk)
            if size is None:
                size = (int(arr.shape[1]), int(arr.shape[2]))
                h, w = size
                if codec.needs_even:
                    h, w = h + h % 2, w + w % 2
                stream = codec.add_stream(out, rate, w, h)
            elif tuple(arr.shape[1:3]) != size:
                raise LBError(f"video frames must all have one size: got {arr.shape[2]}x{arr.shape[1]} "
                              f"after {size[1]}x{size[0]}")
            assert stream is not None
            for frame in arr:
                if codec.needs_even:
                    frame = _pad_even(frame)
                out.mux(stream.encode(encoder_frame(av, frame, codec.pix_fmt, count, rate)))
                count += 1
        if stream is not None:
            out.mux(stream.encode(None))
    if size is None:
        raise LBError("no frames to encode")
    return count, size


def iter_decoded(
    path: str | os.PathLike[str], *, chunk: int = 32, size: tuple[int, int] | None = None,
    expected: int | None = None, what: str = "video",
) -> Iterator[np.ndarray]:
    """Decode a video file's first video stream into chunks of ``(n, H, W, 3)`` uint8 RGB.

    Args:
        chunk: frames per yielded chunk.
        size: crop every frame to ``(H, W)`` (undo even-padding).
        expected: the number of frames there must be; a mismatch is an error.
    """
    from lb_codecs.backends import require_av

    av = require_av()
    buf: list[np.ndarray] = []
    count = 0
    with av.open(os.fspath(path)) as cont:
        stream = cont.streams.video[0]
        for frame in cont.decode(stream):
            img = frame.to_ndarray(format="rgb24")
            if size is not None:
                img = img[: size[0], : size[1]]
            buf.append(img)
            count += 1
            if len(buf) >= chunk:
                yield np.stack(buf)
                buf = []
    if buf:
        yield np.stack(buf)
    if expected is not None and count != expected:
        raise LBError(f"{what}: decoded {count} frames, expected {expected}")


def stream_roundtrip(
    chunks: Iterable[np.ndarray], codecs: Sequence[VideoCodec], fps: float | Fraction, *, chunk: int = 32
) -> Iterator[np.ndarray]:
    """Pass a stream of frame chunks through one or more real encode/decode round trips.

    Each encode writes a temporary file (deleted afterwards); the decoded frames of one pass
    feed the next (``c2``: MPEG-4, then H.264 on the decoded MPEG-4 frames).
    """
    stream: Iterable[np.ndarray] = chunks
    for codec in codecs:
        stream = _one_pass(stream, codec, fps, chunk)
    yield from stream


def _one_pass(chunks: Iterable[np.ndarray], codec: VideoCodec, fps: float | Fraction, chunk: int) -> Iterator[np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="lb_codecs_") as tmp:
        path = os.path.join(tmp, f"roundtrip.{codec.container}")
        n, size = encode_chunks(chunks, path, codec, fps)
        yield from iter_decoded(path, chunk=chunk, size=size, expected=n, what=codec.describe())


def video_roundtrip(
    frames: Sequence[np.ndarray] | np.ndarray, codec: str = "h264", fps: float = 30.0, **opts: Any
) -> list[np.ndarray]:
    """Encode frames as a real video and decode them again.

    Args:
        frames: ``(H, W, 3)`` uint8 RGB frames (a list, or an ``(n, H, W, 3)`` array).
        codec: ``mpeg4``, ``h264``, ``c`` (the paper's C), ``c2`` (C then H.264) or ``ffv1``.
        fps: frame rate written into the video (rate control depends on it).
        **opts: ``bitrate``, ``qscale``, ``crf``, ``preset``, ``gop``, ``container``
            (see :func:`codec_chain`).

    Returns:
        the decoded frames: same count, order and size as ``frames``.
    """
    arr = _as_chunk(np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames)
    out = list(stream_roundtrip([arr], codec_chain(codec, **opts), fps, chunk=max(1, len(arr))))
    return [f for c in out for f in c]
