"""Video: probing, streamed decoding with frame times, and the writer that keeps rate, timing and audio."""


from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from lbcore.errors import InputError, SpecError

if TYPE_CHECKING:  # pragma: no cover
    import av.container


from lbcore.io.files import (
    DEFAULT_MAX_FRAMES,
    PathLike,
    _av,
    _cv2,
    _input_error,
    _output_error,
    atomic_path,
    display_path,
    ensure_not_input,
)

# --------------------------------------------------------------------------------------------
# video


@attrs.frozen
class VideoInfo:
    """What :func:`probe_video` found.

    Attributes:
        path: The file.
        fps: Frame rate as an exact fraction (the stream's average rate, else its guessed rate).
        frame_count: Number of frames (from the container, else counted from the packets).
        width: Frame width in pixels.
        height: Frame height in pixels.
        has_audio: The file has at least one audio stream.
        duration: Length in seconds.
        codec: Video codec name.
        audio_codec: First audio stream's codec name, or None.
        frame_count_exact: True when the container states the frame count (then decoding fewer
            frames means the file is truncated).
    """

    path: Path
    fps: Fraction
    frame_count: int
    width: int
    height: int
    has_audio: bool
    duration: float
    codec: str
    audio_codec: str | None = None
    frame_count_exact: bool = True


def _open_input_video(path: Path) -> av.container.InputContainer:
    _read_check(path)
    av = _av()
    try:
        return av.open(os.fspath(path), "r")
    except av.error.FFmpegError as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise _input_error(path, f"not a readable video ({reason}; truncated or not a video?)") from None


def _read_check(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _input_error(path, "broken symbolic link" if os.path.lexists(path) else "no such file") from None
    except OSError as err:
        raise _input_error(path, err.strerror or err) from None
    if not stat.S_ISREG(st.st_mode):
        raise _input_error(path, "not a regular file")
    if st.st_size == 0:
        raise _input_error(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise _input_error(path, "not readable (permission denied)")


def readable_duration(seconds: float) -> str:
    """``seconds`` as people say it: ``0.4 s``, ``9.2 s``, ``1 min 05 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


def _frames_limit_error(path: Path, n: int | str, fps: Fraction, max_frames: int) -> InputError:
    length = f" ({readable_duration(n / float(fps))})" if isinstance(n, int) else ""
    return _input_error(
        path,
        f"video has {n} frames{length}, over the limit of {max_frames} frames "
        f"({readable_duration(max_frames / float(fps))} at {float(fps):.4g} fps; raise it with --max-frames, "
        "or protect a part with --start/--duration)",
    )


def probe_video(path: PathLike, max_frames: int | None = DEFAULT_MAX_FRAMES) -> VideoInfo:
    """Read a video's frame rate, frame count, size and audio presence without decoding frames.

    Args:
        path: The video file.
        max_frames: Longest accepted video in frames, or None (``--max-frames``).

    Returns:
        The :class:`VideoInfo`.

    Raises:
        InputError: Unreadable, truncated (container index missing), no video stream, or longer
            than ``max_frames``.
    """
    path = Path(path)
    av = _av()
    with _open_input_video(path) as container:
        if not container.streams.video:
            what = "only audio" if container.streams.audio else "no streams"
            raise _input_error(path, f"has no video stream ({what})")
        vs = container.streams.video[0]
        cc = vs.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise _input_error(path, "video stream has no frame size (corrupt?)")
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        fps = Fraction(rate) if rate else Fraction(0)
        if fps <= 0:
            raise _input_error(path, "video stream has no frame rate")
        n = int(vs.frames or 0)
        exact = n > 0
        if not exact:
            # Matroska/WebM do not store a frame count: count the packets (no decoding).
            limit = None if max_frames is None else max_frames + 1
            try:
                for pkt in container.demux(vs):
                    if pkt.size:
                        n += 1
                        if limit is not None and n >= limit:
                            break
            except av.error.FFmpegError as err:
                raise _input_error(path, f"corrupt or truncated video while counting frames ({err})") from None
            if n == 0:
                raise _input_error(path, "video stream has no frames")
        if max_frames is not None and n > max_frames:
            raise _frames_limit_error(path, n if exact else f"more than {max_frames}", fps, max_frames)
        # The video stream's own duration; the container's may include a longer audio track.
        duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else n / float(fps)
        audio = container.streams.audio
        return VideoInfo(
            path=path,
            fps=fps,
            frame_count=n,
            width=width,
            height=height,
            has_audio=bool(audio),
            duration=duration,
            codec=cc.name,
            audio_codec=audio[0].codec_context.name if audio else None,
            frame_count_exact=exact,
        )


def iter_video_frames_timed(
    path: PathLike, max_frames: int | None = DEFAULT_MAX_FRAMES, *, start: int = 0, stop: int | None = None
) -> Iterator[tuple[np.ndarray, Fraction | None]]:
    """Stream a video's frames with their presentation times, one at a time (constant memory).

    Args:
        path: The video file.
        max_frames: Longest accepted video in frames, or None (``--max-frames``).
        start: Yield only frames ``start`` (0-based, in decoding order) and later. The frames
            before are decoded and dropped, never seeked over, so frame ``start`` is exactly the
            frame a full pass yields at that position (seeking lands on key frames only).
        stop: Stop before frame ``stop`` (None: the end). Stopping early skips the check that
            the file holds every frame its container promises.

    Yields:
        ``(rgb, time)``: (H, W, 3) uint8 RGB and the frame's time in seconds (None when unknown).

    Raises:
        InputError: As :func:`probe_video`, plus a corrupt stream, or fewer frames than the
            container promises (truncated file).
    """
    path = Path(path)
    info = probe_video(path, max_frames)
    av = _av()
    container = _open_input_video(path)
    n = 0
    try:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        try:
            for frame in container.decode(vs):
                n += 1
                if max_frames is not None and n > max_frames:
                    raise _frames_limit_error(path, f"more than {max_frames}", info.fps, max_frames)
                if n <= start:
                    continue
                t = frame.pts * frame.time_base if frame.pts is not None and frame.time_base else None
                yield frame.to_ndarray(format="rgb24"), t
                if stop is not None and n >= stop:
                    return
        except av.error.FFmpegError as err:
            raise _input_error(path, f"corrupt or truncated video at frame {n + 1} ({err})") from None
        if info.frame_count_exact and n < info.frame_count:
            raise _input_error(
                path, f"truncated video: the container promises {info.frame_count} frames, only {n} could be decoded"
            )
    finally:
        container.close()


def iter_video_frames(path: PathLike, max_frames: int | None = DEFAULT_MAX_FRAMES) -> Iterator[np.ndarray]:
    """Stream a video's frames as (H, W, 3) uint8 RGB arrays, one at a time (constant memory).

    See :func:`iter_video_frames_timed` for the frames' times and the errors raised.
    """
    for rgb, _ in iter_video_frames_timed(path, max_frames):
        yield rgb


VIDEO_CODECS: dict[str, tuple[str, ...]] = {
    "ffv1": (".mkv", ".avi"),
    "h264": (".mp4", ".mov", ".m4v", ".mkv"),
    "png": ("",),
}
"""Codecs :class:`VideoWriter` offers and the output suffixes each accepts (png: a folder)."""

DEFAULT_VIDEO_SUFFIX = {"ffv1": ".mkv", "h264": ".mp4", "png": ""}
"""The suffix to give an output for each codec (``png`` writes a folder of frames)."""

# audio encoders tried, in order, when the source's audio codec cannot go into the container
_AUDIO_FALLBACKS = ("aac", "libopus", "flac", "libmp3lame")


class _AudioCopy:
    """Copies the first audio stream of a source into an output container as video time advances.

    The packets are remuxed unchanged when the container accepts the codec; otherwise the audio is
    decoded and re-encoded with the first encoder in ``_AUDIO_FALLBACKS`` that the container
    accepts, and ``note`` says so. Interleaving with the video keeps the muxer's buffer small.
    """

    def __init__(self, source: Path, out: Any) -> None:
        av = _av()
        self.note: str | None = None
        self.inp: Any = _open_input_video(source)
        self.stream_in: Any = None
        self.stream_out: Any = None
        self.encoder = False
        self._pending: Any = None
        self._packets: Iterator[Any] | None = None
        if self.inp is None or not self.inp.streams.audio:
            if self.inp is not None:
                self.inp.close()
                self.inp = None
            return
        a = self.inp.streams.audio[0]
        self.stream_in = a
        supported = out.supported_codecs
        name = a.codec_context.name
        if name in supported:
            self.stream_out = out.add_stream_from_template(a)
        else:
            for enc in _AUDIO_FALLBACKS:
                try:
                    codec = av.codec.Codec(enc, "w")
                except Exception:  # encoder not built in
                    continue
                if codec.name in supported or enc in supported:
                    rate = a.codec_context.sample_rate or 48000
                    if codec.audio_rates and rate not in codec.audio_rates:
                        rate = 48000 if 48000 in codec.audio_rates else max(codec.audio_rates)
                    self.stream_out = out.add_stream(enc, rate=rate, layout=a.codec_context.layout.name)
                    self.encoder = True
                    self.note = f"audio {name} cannot go into {out.format.name}: re-encoded to {codec.name}"
                    break
            if self.stream_out is None:
                self.note = f"audio {name} cannot go into {out.format.name} and no encoder fits: audio dropped"
                self.inp.close()
                self.inp = None
                return
        self._packets = iter(self.inp.demux(a))

    def pump(self, out: Any, until: float | None) -> None:
        """Mux the source's audio up to ``until`` seconds (everything when None)."""
        if self._packets is None:
            return
        av = _av()
        while True:
            pkt = self._pending
            self._pending = None
            if pkt is None:
                try:
                    pkt = next(self._packets)
                except (StopIteration, av.error.EOFError):
                    self._packets = None
                    break
                except av.error.FFmpegError:
                    self._packets = None  # a damaged audio tail ends the copy; the video is kept
                    break
            if pkt.dts is None:
                continue
            t = float(pkt.dts * pkt.time_base) if pkt.time_base else 0.0
            if until is not None and t > until:
                self._pending = pkt
                return
            if self.encoder:
                for frame in pkt.decode():
                    frame.pts = None  # let the encoder count samples
                    for p in self.stream_out.encode(frame):
                        out.mux(p)
            else:
                pkt.stream = self.stream_out
                out.mux(pkt)
        if self.encoder:
            for p in self.stream_out.encode(None):
                out.mux(p)

    def close(self) -> None:
        if self.inp is not None:
            self.inp.close()
            self.inp = None


class VideoWriter:
    """Write RGB frames to a video file atomically, keeping the frame rate and copying the audio.

    Use as a context manager: frames go to a hidden temporary file beside ``path`` that is renamed
    onto ``path`` only when the block ends without an exception (and deleted otherwise).

    Codecs:
        * ``"ffv1"`` (default): lossless, RGB stored as ``bgr0`` so no colour conversion; any frame
          size; ``.mkv`` or ``.avi``.
        * ``"h264"``: libx264, ``yuv420p``, quality ``crf`` (0..51, lower is better), ``.mp4``,
          ``.mov``, ``.m4v`` or ``.mkv``. 4:2:0 needs an even width and height: an odd-sized
          frame is padded by repeating its last column/row, so the output is one pixel wider or
          taller (documented, never cropped).
        * ``"png"``: ``path`` is a folder of ``000000.png``, ``000001.png``, ... (lossless, any
          size); the audio is not kept (``audio_note`` says so).

    Timing: without times, frame *i* is shown at ``i / fps`` (constant rate). If the first frame
    is written with a time (seconds, e.g. from :func:`iter_video_frames_timed`), every frame keeps
    its own time, so a variable-frame-rate input keeps its timing (to 1/90000 s; Matroska rounds to
    milliseconds); ``fps`` is then only the nominal rate.

    Args:
        path: Output file (or folder for ``png``).
        fps: Frame rate (an exact :class:`~fractions.Fraction` such as 30000/1001 is kept exactly).
        codec: ``"ffv1"``, ``"h264"`` or ``"png"``.
        crf: h264 quality.
        preset: h264 speed preset.
        audio_from: A video whose first audio stream is copied into the output, or None.
        inputs: Paths the output must not overwrite (``audio_from`` is always one).
    """

    def __init__(
        self,
        path: PathLike,
        fps: Fraction | float | int,
        *,
        codec: str = "ffv1",
        crf: int = 18,
        preset: str = "medium",
        audio_from: PathLike | None = None,
        inputs: Iterable[PathLike] = (),
    ) -> None:
        self.path = Path(path)
        if codec not in VIDEO_CODECS:
            raise SpecError(f"unknown video codec {codec!r}: use one of {', '.join(VIDEO_CODECS)}")
        suffix = self.path.suffix.lower() if codec != "png" else ""
        if suffix not in VIDEO_CODECS[codec]:
            allowed = ", ".join(s for s in VIDEO_CODECS[codec])
            raise SpecError(f"{display_path(self.path)}: codec {codec} needs a {allowed} file")
        self.fps = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
        if self.fps <= 0:
            raise SpecError(f"{display_path(self.path)}: frame rate must be positive, got {fps}")
        self.codec = codec
        self.crf = int(crf)
        self.preset = preset
        self.audio_from = Path(audio_from) if audio_from is not None else None
        guarded = list(inputs) + ([self.audio_from] if self.audio_from is not None else [])
        ensure_not_input(self.path, guarded)
        self.frames_written = 0
        self.audio_note: str | None = None
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._tmp: Path | None = None
        self._out: Any = None
        self._stream: Any = None
        self._audio: _AudioCopy | None = None
        self._timed: bool | None = None
        self._last_pts = -1
        self._size: tuple[int, int] | None = None

    # -- context manager

    def __enter__(self) -> VideoWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        if self.codec == "png":
            self._tmp.mkdir()
            if self.audio_from is not None:
                self.audio_note = "a folder of PNG frames cannot hold audio: audio not kept"
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._atomic is not None
        try:
            if exc_type is None:
                self._finish()
        except BaseException as err:
            self._abort()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        if exc_type is not None:
            self._abort()
            self._atomic.__exit__(exc_type, exc, tb)
            return
        self._atomic.__exit__(None, None, None)

    # -- writing

    _TIMED_BASE = Fraction(1, 90000)

    def write(self, rgb: np.ndarray, time: Fraction | float | None = None) -> None:
        """Append one (H, W, 3) uint8 RGB frame, optionally at ``time`` seconds."""
        av = _av()
        if self._tmp is None:
            raise RuntimeError("VideoWriter.write outside its 'with' block")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        h, w = rgb.shape[:2]
        if self._size is None:
            self._size = (w, h)
        elif self._size != (w, h):
            raise ValueError(f"frame {self.frames_written} is {w}x{h}, earlier frames {self._size[0]}x{self._size[1]}")
        if self.codec == "png":
            self._write_png(rgb)
            return
        if self._out is None:
            self._timed = time is not None
            self._open(w, h)
        if self.codec == "h264" and (w % 2 or h % 2):
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self._timed:
            if time is None:
                raise ValueError("once the first frame has a time, every frame needs one")
            pts = round(Fraction(time) / self._TIMED_BASE)
            if self._last_pts >= 0 and pts <= self._last_pts:
                # a time that repeats or goes back (a clip whose times are all 0 became a 0.002 s
                # video): repaired to one frame period after the frame before
                pts = self._last_pts + max(1, round(1 / (self.fps * self._TIMED_BASE)))
            t_now = float(pts * self._TIMED_BASE)
        else:
            pts = self.frames_written
            t_now = float(pts / self.fps)
        frame.pts = pts
        self._last_pts = pts
        try:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
            if self._audio is not None:
                self._audio.pump(self._out, t_now)
        except av.error.FFmpegError as err:
            raise _output_error(self.path, f"cannot encode frame {self.frames_written}: {err}") from None
        self.frames_written += 1

    def _write_png(self, rgb: np.ndarray) -> None:
        cv2 = _cv2()
        assert self._tmp is not None
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise _output_error(self.path, f"cannot encode frame {self.frames_written} as PNG")
        (self._tmp / f"{self.frames_written:06d}.png").write_bytes(buf.tobytes())
        self.frames_written += 1

    def _open(self, w: int, h: int) -> None:
        av = _av()
        assert self._tmp is not None
        options = {"movflags": "+faststart"} if self._tmp.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self._out = av.open(os.fspath(self._tmp), "w", options=options)
            if self.codec == "ffv1":
                stream = self._out.add_stream("ffv1", rate=self.fps)
                stream.pix_fmt = "bgr0"
            else:
                stream = self._out.add_stream("libx264", rate=self.fps)
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(self.crf), "preset": self.preset}
                w, h = w + w % 2, h + h % 2
            stream.width, stream.height = w, h
            stream.codec_context.time_base = self._TIMED_BASE if self._timed else 1 / self.fps
            self._stream = stream
            if self.audio_from is not None:
                self._audio = _AudioCopy(self.audio_from, self._out)
                self.audio_note = self._audio.note
        except av.error.FFmpegError as err:
            raise _output_error(self.path, f"cannot start the {self.codec} video: {err}") from None

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise _output_error(self.path, "no frames were written")
        if self._out is None:  # png folder
            return
        av = _av()
        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
            if self._audio is not None:
                self._audio.pump(self._out, None)
        except av.error.FFmpegError as err:
            raise _output_error(self.path, f"cannot finish the video: {err}") from None
        finally:
            self._close()

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close()

    def _close(self) -> None:
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        if self._out is not None:
            out, self._out = self._out, None
            out.close()


