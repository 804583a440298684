"""``lb degrade``: images to PNGs, videos streamed to FFV1 with audio copied, safe writes."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from lb_codecs.image import jpeg_roundtrip
from lb_codecs.video import iter_decoded, video_roundtrip


@pytest.fixture
def lb(codecs_pm, monkeypatch):
    """Run ``lb`` in-process with a plugin manager holding this plugin."""
    from lbcore import plugins
    from lbcore.cli import cli

    monkeypatch.setattr(plugins, "_shared", codecs_pm)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return run


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def make_video(path: Path, frames: np.ndarray, fps: int = 25, audio: bool = True) -> None:
    """An H.264 video of ``frames`` and, optionally, a mono AAC tone lasting as long."""
    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps, options={"crf": "10"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = None
        if audio:
            a = out.add_stream("aac", rate=44100)
            a.layout = "mono"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            out.mux(v.encode(vf))
        out.mux(v.encode(None))
        if a is not None:
            n = int(44100 * len(frames) / fps) // 1024
            for k in range(n):
                t = (np.arange(1024) + k * 1024) / 44100
                af = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts = 44100, k * 1024
                out.mux(a.encode(af))
            out.mux(a.encode(None))


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


@pytest.fixture(scope="module")
def clip_frames(astronaut) -> np.ndarray:
    base = astronaut[100:172, 180:278]
    return np.stack([np.roll(base, 2 * i, axis=1) for i in range(30)])  # 30 frames, 98x72


def test_images_become_pngs_of_the_degraded_image(lb, tmp_path, astronaut):
    a, b = astronaut[:60, :90], astronaut[200:251, 300:377]
    _write_rgb(tmp_path / "a.png", a)
    _write_rgb(tmp_path / "b.bmp", b)
    before = (tmp_path / "a.png").read_bytes()
    out = tmp_path / "out"
    res = lb("degrade", "jpeg:quality=50", str(tmp_path / "a.png"), str(tmp_path / "b.bmp"), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no temporary files left
    assert np.array_equal(_read_rgb(out / "a.png"), jpeg_roundtrip(np.ascontiguousarray(a), 50))
    assert np.array_equal(_read_rgb(out / "b.png"), jpeg_roundtrip(np.ascontiguousarray(b), 50))
    assert (tmp_path / "a.png").read_bytes() == before


def test_chain_on_an_image(lb, tmp_path, astronaut):
    img = np.ascontiguousarray(astronaut[:64, :64])
    _write_rgb(tmp_path / "x.png", img)
    res = lb("degrade", "jpeg:quality=75+h264:crf=23", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    expected = video_roundtrip([jpeg_roundtrip(img, 75)], "h264", crf=23)[0]
    assert np.abs(_read_rgb(tmp_path / "o" / "x.png").astype(np.int16) - expected).mean() < 2.0


def test_never_overwrites_an_input(lb, tmp_path, astronaut):
    _write_rgb(tmp_path / "a.png", astronaut[:32, :32])
    before = (tmp_path / "a.png").read_bytes()
    res = lb("degrade", "blur:sigma=2", str(tmp_path / "a.png"), "-o", str(tmp_path))
    assert res.exit_code == 1
    assert "would overwrite an input" in res.output
    assert (tmp_path / "a.png").read_bytes() == before


def test_bad_inputs_are_reported_and_others_processed(lb, tmp_path, astronaut):
    _write_rgb(tmp_path / "ok.png", astronaut[:32, :32])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("hello")
    res = lb("degrade", "noise:std=1,seed=0", str(tmp_path / "missing.png"), str(tmp_path / "broken.png"),
             str(tmp_path / "notes.txt"), str(tmp_path / "ok.png"), "-o", str(tmp_path / "o"))
    assert res.exit_code == 1
    errors = " | ".join(line for line in res.output.splitlines() if line.startswith("lb: error:"))
    assert errors.count("lb: error:") == 3
    assert "missing.png: no such file" in errors and "broken.png: not a readable image" in errors
    assert "notes.txt: unknown file type .txt" in errors
    assert (tmp_path / "o" / "ok.png").is_file()


def test_bad_spec_is_usage_error(lb, tmp_path):
    res = lb("degrade", "jpeg:quality=500", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"))
    assert res.exit_code == 2 and "quality must be in 1..100" in res.output
    res = lb("degrade", "gzip", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"))
    assert res.exit_code == 2 and "unknown degradation 'gzip'" in res.output


def test_images_as_one_clip(lb, tmp_path, clip_frames):
    paths = []
    for i, f in enumerate(clip_frames[:6]):
        paths.append(tmp_path / f"f{i}.png")
        _write_rgb(paths[-1], f)
    res = lb("degrade", "c", *map(str, paths), "-o", str(tmp_path / "o"), "--as-clip", "--fps", "25", "--chunk", "4")
    assert res.exit_code == 0, res.output
    expected = video_roundtrip(clip_frames[:6], "c", fps=25)
    for i in range(6):
        assert np.array_equal(_read_rgb(tmp_path / "o" / f"f{i}.png"), expected[i])


def test_video_keeps_fps_frames_and_audio(lb, tmp_path, clip_frames):
    src = tmp_path / "clip.mp4"
    make_video(src, clip_frames, fps=25, audio=True)
    decoded_src = np.concatenate(list(iter_decoded(src)))
    res = lb("degrade", "c2", str(src), "-o", str(tmp_path / "o"), "--chunk", "7")
    assert res.exit_code == 0, res.output
    dst = tmp_path / "o" / "clip.mkv"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["clip.mkv"]
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == "ffv1" and v.average_rate == Fraction(25)
        assert len(c.streams.audio) == 1 and c.streams.audio[0].codec_context.name == "aac"
    out = np.concatenate(list(iter_decoded(dst)))
    assert out.shape == decoded_src.shape == (30, 72, 98, 3)
    # lossless output of what C2 does to the input's frames at the input's frame rate (up to
    # libx264's rare run-to-run differences)
    expected = np.stack(video_roundtrip(decoded_src, "c2", fps=25))
    assert np.abs(out.astype(np.int16) - expected).mean() < 2.0
    assert np.abs(out.astype(np.int16) - decoded_src).mean() > 0.3  # and it did degrade them
    # audio packets are copied through untouched
    assert _audio_packets(dst) == _audio_packets(src) and len(_audio_packets(src)) > 10


def test_video_without_audio_and_image_stage(lb, tmp_path, clip_frames):
    src = tmp_path / "silent.mp4"
    make_video(src, clip_frames[:9], fps=30, audio=False)
    res = lb("degrade", "jpeg:quality=40", str(src), "-o", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    out = np.concatenate(list(iter_decoded(tmp_path / "o" / "silent.mkv")))
    src_frames = np.concatenate(list(iter_decoded(src)))
    assert out.shape == (9, 72, 98, 3)
    assert all(np.array_equal(o, jpeg_roundtrip(s, 40)) for o, s in zip(out, src_frames, strict=True))
    assert _audio_packets(tmp_path / "o" / "silent.mkv") == []


def test_registered_with_the_lb_command():
    out = subprocess.run([sys.executable, "-m", "lbcore", "degrade", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "SPEC" in out.stdout and "--as-clip" in out.stdout
