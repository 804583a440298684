"""``lb degrade SPEC INPUT... -o OUT``: apply a degradation stage or chain to images or videos.

Images are written as lossless PNGs; videos are streamed chunk by chunk through the stages and
written, at the input's frame rate, as lossless FFV1 in Matroska (``OUT/<name>.mkv``), so the
output holds exactly the degraded frames; the input's first audio stream is copied through
unchanged. Each stage's output is stored with 8 bits per sample, as a real pipeline would.
Outputs are written under a temporary name in ``OUT`` and renamed into place; an input is
never overwritten.

Importing this module must stay cheap: torch, OpenCV and PyAV load inside the command.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from lbcore.errors import InputError, LBError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}


def flatten_stages(degradation: Any) -> list[Any]:
    """The stages of a degradation, chains flattened (``none`` gives no stage)."""
    inner = getattr(degradation, "stages", None)
    if inner is None:
        return [degradation]
    return [s for st in inner for s in flatten_stages(st)]


def _tensor_stage(stage: Any, chunks: Iterable[Any]) -> Iterator[Any]:
    import torch

    from lb_codecs.stages import from_frames, to_frames

    like = torch.empty(0)
    for chunk in chunks:
        with torch.no_grad():
            yield to_frames(stage(from_frames(chunk, like)))


def run_stages(stages: list[Any], chunks: Iterable[Any], fps: float | Fraction | None) -> Iterator[Any]:
    """Pass ``(n, H, W, 3)`` uint8 chunks through the stages lazily (real codecs stream)."""
    stream: Iterable[Any] = chunks
    for stage in stages:
        stream = stage.stream(stream, fps) if hasattr(stage, "stream") else _tensor_stage(stage, stream)
    yield from stream


def _read_image(path: Path) -> Any:
    import numpy as np

    from lb_codecs.backends import require_cv2

    cv2 = require_cv2()
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _tmp_name(final: Path, ext: str) -> Path:
    return final.with_name(f".{final.stem}.{os.getpid()}.tmp{ext}")


def _write_png(rgb: Any, dst: Path) -> None:
    from lb_codecs.backends import require_cv2

    cv2 = require_cv2()
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1].copy())
    if not ok:
        raise LBError(f"{dst}: PNG encoding failed")
    tmp = _tmp_name(dst, ".png")
    try:
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _video_frames(src: Path, chunk: int) -> Iterator[Any]:
    from lb_codecs.video import iter_decoded

    yield from iter_decoded(src, chunk=chunk)


def _degrade_video(src: Path, dst: Path, stages: list[Any], chunk: int) -> int:
    """Stream a video through the stages into ``dst`` (FFV1 + copied audio). Returns frames."""
    from lb_codecs.backends import require_av
    from lb_codecs.video import VideoCodec, as_rate, encoder_frame

    av = require_av()
    try:
        with av.open(str(src)) as probe:
            if not probe.streams.video:
                raise InputError(f"{src}: no video stream")
            vs = probe.streams.video[0]
            rate = vs.average_rate or vs.guessed_rate or Fraction(30)
            has_audio = bool(probe.streams.audio)
    except av.error.FFmpegError as err:
        raise InputError(f"{src}: not a readable video ({err})") from None
    rate = as_rate(rate)
    frames = run_stages(stages, _video_frames(src, chunk), rate)
    tmp = _tmp_name(dst, ".mkv")
    audio_in = av.open(str(src)) if has_audio else None
    count = 0
    try:
        with av.open(str(tmp), "w", format="matroska") as out:
            first = next(frames, None)
            if first is None:
                raise InputError(f"{src}: no frames")
            h, w = first.shape[1:3]
            vout = VideoCodec("ffv1", "mkv", pix_fmt="bgr0").add_stream(out, rate, w, h)
            audio_packets: Iterator[Any] = iter(())
            aout = None
            if audio_in is not None:
                ain = audio_in.streams.audio[0]
                aout = out.add_stream_from_template(ain)
                audio_packets = (p for p in audio_in.demux(ain) if p.dts is not None and p.size)
            pending = next(audio_packets, None)

            def mux_audio_until(t: float | None) -> None:
                # Interleave: copy the audio packets that start before the next video frame.
                nonlocal pending
                while pending is not None and (t is None or float(pending.pts * pending.time_base) <= t):
                    pending.stream = aout
                    out.mux(pending)
                    pending = next(audio_packets, None)

            for chunk_frames in _chain_first(first, frames):
                for frame in chunk_frames:
                    mux_audio_until(float(count / rate))
                    out.mux(vout.encode(encoder_frame(av, frame, "bgr0", count, rate)))
                    count += 1
            out.mux(vout.encode(None))
            mux_audio_until(None)
        os.replace(tmp, dst)
    finally:
        if audio_in is not None:
            audio_in.close()
        tmp.unlink(missing_ok=True)
    return count


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _kind(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise InputError(f"{path}: unknown file type {ext or '(no extension)'} "
                     f"(images: {', '.join(sorted(IMAGE_EXTS))}; videos: {', '.join(sorted(VIDEO_EXTS))})")


@click.command("degrade")
@click.argument("spec")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if needed).")
@click.option("--as-clip", is_flag=True,
              help="Treat the input images as consecutive frames of one clip (for video stages, as the paper's C/C2).")
@click.option("--fps", type=float, default=None,
              help="Frame rate for video stages applied to images (default: the stage's own, 30).")
@click.option("--chunk", type=click.IntRange(1), default=32, show_default=True,
              help="Frames held in memory at a time when streaming a video.")
@click.pass_context
def degrade(ctx: click.Context, spec: str, inputs: tuple[Path, ...], out_dir: Path, as_clip: bool,
            fps: float | None, chunk: int) -> None:
    """Apply a degradation SPEC (e.g. jpeg:quality=75+h264:crf=23, c2) to images or videos.

    Images become lossless PNGs in OUT; a video becomes OUT/<name>.mkv (lossless FFV1 of the
    degraded frames, same frame rate, audio copied through).
    """
    from lbcore.plugins import get_plugin_manager

    stages = flatten_stages(get_plugin_manager().build_degradation(spec))
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {p.resolve() for p in inputs}
    taken: set[Path] = set()
    failed = 0

    def target(src: Path, ext: str) -> Path:
        dst = (out_dir / (src.stem + ext)).resolve()
        if dst in sources:
            raise InputError(f"{src}: output {dst} would overwrite an input; choose another -o folder")
        if dst in taken:
            raise InputError(f"{src}: output {dst} already written by another input of the same name")
        taken.add(dst)
        return dst

    def report(err: LBError) -> None:
        nonlocal failed
        failed += 1
        click.echo(f"lb: error: {err}", err=True)

    images: list[Path] = []
    for src in inputs:
        try:
            if not src.is_file():
                raise InputError(f"{src}: no such file")
            if _kind(src) == "image":
                images.append(src)
                continue
            dst = target(src, ".mkv")
            n = _degrade_video(src, dst, stages, chunk)
            click.echo(f"{src} -> {dst} ({n} frames)")
        except LBError as err:
            report(err)

    if as_clip and images:
        import numpy as np

        try:
            frames = [_read_image(p) for p in images]
            if len({f.shape for f in frames}) > 1:
                raise InputError("--as-clip: the images must all have the same size")
            dsts = [target(p, ".png") for p in images]
            clip = np.stack(frames)
            chunks = (clip[i:i + chunk] for i in range(0, len(clip), chunk))
            i = 0
            for out in run_stages(stages, chunks, fps):
                for frame in out:
                    _write_png(frame, dsts[i])
                    click.echo(f"{images[i]} -> {dsts[i]}")
                    i += 1
        except LBError as err:
            report(err)
    else:
        for src in images:
            try:
                rgb = _read_image(src)
                dst = target(src, ".png")
                (out,) = list(run_stages(stages, [rgb[None]], fps))
                _write_png(out[0], dst)
                click.echo(f"{src} -> {dst}")
            except LBError as err:
                report(err)
    if failed:
        ctx.exit(1)
