"""Real video round trips through PyAV: MPEG-4, H.264, the paper's C and C2."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from lb_codecs.image import psnr
from lb_codecs.video import (
    as_rate,
    codec_chain,
    encode_chunks,
    iter_decoded,
    stream_roundtrip,
    video_roundtrip,
)
from lbcore.errors import LBError


def _mean_psnr(a, b) -> float:
    return float(np.mean([psnr(x, y) for x, y in zip(a, b, strict=True)]))


def _close(a, b, tol: float = 2.0) -> bool:
    """Equal up to libx264's rare run-to-run differences (mean absolute difference in grey levels)."""
    return all(np.abs(x.astype(np.int16) - y).mean() < tol for x, y in zip(a, b, strict=True))


def _assert_same_frames_in_order(original: np.ndarray, decoded: list[np.ndarray]) -> None:
    assert len(decoded) == len(original)
    for i, frame in enumerate(decoded):
        assert frame.shape == original[i].shape and frame.dtype == np.uint8
        err = [np.abs(frame.astype(np.int16) - o).mean() for o in original]
        assert int(np.argmin(err)) == i, f"decoded frame {i} looks like original frame {int(np.argmin(err))}"


@pytest.mark.parametrize("codec", ["mpeg4", "h264", "c", "c2", "ffv1"])
def test_round_trip_keeps_count_order_and_odd_size(moving_clip, codec):
    out = video_roundtrip(moving_clip, codec, fps=30)
    _assert_same_frames_in_order(moving_clip, out)
    quality = _mean_psnr(moving_clip, out)
    if codec == "ffv1":
        assert quality == float("inf")  # lossless
    else:
        assert 28 < quality < 60


def test_h264_crf_moves_psnr(moving_clip):
    values = [_mean_psnr(moving_clip, video_roundtrip(moving_clip, "h264", crf=crf)) for crf in (12, 23, 35, 45)]
    assert values == sorted(values, reverse=True)
    assert values[0] - values[-1] > 8


def test_mpeg4_quantiser_and_bitrate_move_psnr(moving_clip):
    qs = [_mean_psnr(moving_clip, video_roundtrip(moving_clip, "mpeg4", qscale=q)) for q in (2, 8, 25)]
    assert qs == sorted(qs, reverse=True) and qs[0] - qs[-1] > 6
    hi = _mean_psnr(moving_clip, video_roundtrip(moving_clip, "mpeg4", bitrate=3_000_000))
    lo = _mean_psnr(moving_clip, video_roundtrip(moving_clip, "mpeg4", bitrate=20_000))
    assert hi > lo + 3


def test_c2_is_c_then_h264_and_differs_from_c(moving_clip):
    c = video_roundtrip(moving_clip, "c")
    c2 = video_roundtrip(moving_clip, "c2")
    assert any(not np.array_equal(a, b) for a, b in zip(c, c2, strict=True))
    again = video_roundtrip(np.stack(c), "h264", crf=23, preset="medium")
    assert _close(c2, again)
    assert not _close(c, c2, tol=0.3)
    # the second, lossy encode costs quality relative to C
    assert _mean_psnr(moving_clip, c2) < _mean_psnr(moving_clip, c)


@pytest.mark.parametrize("codec", ["c", "mpeg4", "ffv1"])
def test_deterministic(moving_clip, codec):
    a = video_roundtrip(moving_clip, codec)
    b = video_roundtrip(moving_clip, codec)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_h264_repeatable_up_to_small_differences(moving_clip):
    a = video_roundtrip(moving_clip, "h264")
    b = video_roundtrip(moving_clip, "h264")
    assert _close(a, b)


def test_streaming_in_chunks_equals_one_chunk(moving_clip):
    whole = np.concatenate(list(stream_roundtrip([moving_clip], codec_chain("c2"), 30)))
    chunks = [moving_clip[i:i + 5] for i in range(0, len(moving_clip), 5)]
    parts = list(stream_roundtrip(iter(chunks), codec_chain("c2"), 30, chunk=4))
    assert [len(p) for p in parts] == [4, 4, 4]
    assert _close(np.concatenate(parts), whole)
    c_parts = np.concatenate(list(stream_roundtrip(iter(chunks), codec_chain("c"), 30, chunk=4)))
    assert np.array_equal(c_parts, np.concatenate(list(stream_roundtrip([moving_clip], codec_chain("c"), 30))))


def test_frame_rate_is_written(tmp_path, moving_clip):
    import av

    path = tmp_path / "v.mp4"
    n, size = encode_chunks([moving_clip], path, codec_chain("h264")[0], 29.97)
    assert (n, size) == (12, (95, 127))
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.average_rate == Fraction(2997, 100)
        assert (s.codec_context.width, s.codec_context.height) == (128, 96)  # padded to even
    frames = np.concatenate(list(iter_decoded(path, size=size, expected=12)))
    assert frames.shape == (12, 95, 127, 3)
    with pytest.raises(LBError, match="decoded 12 frames, expected 13"):
        list(iter_decoded(path, expected=13))


def test_as_rate():
    assert as_rate(25) == 25 and as_rate(29.97) == Fraction(2997, 100)
    assert as_rate(30000 / 1001) == Fraction(30000, 1001)
    assert as_rate(Fraction(24000, 1001)) == Fraction(24000, 1001)
    with pytest.raises(LBError):
        as_rate(0)


def test_video_stage_on_tensors_and_straight_through(codecs_pm, moving_clip):
    x = torch.from_numpy(moving_clip).permute(0, 3, 1, 2).float()
    real = codecs_pm.build_degradation("c2")
    y = real(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    ref = np.stack(video_roundtrip(moving_clip, "c2"))
    assert _close(y.permute(0, 2, 3, 1).numpy().astype(np.uint8), ref)
    c = codecs_pm.build_degradation("c")(x)
    assert torch.equal(c, torch.from_numpy(np.stack(video_roundtrip(moving_clip, "c"))).permute(0, 3, 1, 2).float())

    st = codecs_pm.build_degradation("st-c2")
    xg = x.clone().requires_grad_(True)
    z = st(xg)
    assert _close(z.detach().permute(0, 2, 3, 1).numpy().astype(np.uint8), ref)  # the real codec forward
    w = torch.randn_like(x)
    (g,) = torch.autograd.grad((z * w).sum(), xg)
    assert torch.equal(g, w)  # identity backward


def test_real_clip_c_and_c2(shared):
    """The first 30 frames of a real H.264 clip (640x360) through C and C2."""
    path = shared / "data" / "video" / "short_hamilton_clip.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    frames = next(iter_decoded(path, chunk=30))
    assert frames.shape == (30, 360, 640, 3)
    c = video_roundtrip(frames, "c", fps=29.97)
    c2 = video_roundtrip(frames, "c2", fps=29.97)
    for out in (c, c2):
        assert len(out) == 30 and all(f.shape == (360, 640, 3) for f in out)
    # order: every decoded frame is closest to its own source (the clip repeats some frames
    # almost exactly, hence the small tolerance; its scene cut after frame 19 pins the order)
    for out in (c, c2):
        for i in range(30):
            errs = [np.abs(out[i].astype(np.int16) - frames[j]).mean() for j in range(30)]
            assert errs[i] <= min(errs) + 0.3, f"frame {i}"
        assert np.abs(out[19].astype(np.int16) - frames[20]).mean() > 10
    p_c, p_c2 = _mean_psnr(frames, c), _mean_psnr(frames, c2)
    assert 30 < p_c < 60 and 28 < p_c2 < p_c
    assert any(not np.array_equal(a, b) for a, b in zip(c, c2, strict=True))
