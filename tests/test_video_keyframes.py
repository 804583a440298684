"""Video key frames (issue 19): flow warping, scene cuts, the planner, the protect options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lbcore.apps.propagation import KeyFramePlanner, dense_flow, warp

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "short_hamilton_clip.mp4"
PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos" / "two_people.jpg"
needs_data = pytest.mark.skipif(not (CLIP.exists() and PHOTO.exists()), reason="needs /work/shared/data (clip and photo)")


def _photo(w: int = 720, h: int = 420) -> np.ndarray:
    from PIL import Image

    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB").resize((w, h)))


def _clip_frames(n: int) -> list[np.ndarray]:
    from lbcore.io import iter_video_frames

    out = []
    for f in iter_video_frames(CLIP, max_frames=None):
        out.append(f)
        if len(out) == n:
            break
    return out


def _smooth_noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.uniform(-15, 15, (h, w, 3)).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 2.0) * 4


@needs_data
@pytest.mark.parametrize("max_side", [640, 320])  # full size, and a flow computed on a shrunk copy
def test_a_shifted_frames_warped_perturbation_is_the_shifted_perturbation(max_side):
    big = _photo()
    dx, dy = 7, 4
    key, frame = big[20:380, 40:680], big[20 - dy:380 - dy, 40 - dx:680 - dx]  # frame = key moved by (dx, dy)
    delta = _smooth_noise(*key.shape[:2])
    planner = KeyFramePlanner(8, max_side=max_side)
    box = [[200.0, 80.0, 440.0, 320.0]]
    assert planner.plan(0, key, box).kind == "key"
    plan = planner.plan(1, frame, [[b + dx * (i % 2 == 0) + dy * (i % 2) for i, b in enumerate(box[0])]])
    assert plan.kind == "propagated" and plan.ref == 0 and plan.error < 5, plan
    got = warp(torch.from_numpy(delta).permute(2, 0, 1)[None], plan.flow[None])[0].permute(1, 2, 0).numpy()
    want = np.zeros_like(delta)
    want[dy:, dx:] = delta[:-dy, :-dx]
    m = 24  # away from the borders
    err = np.abs(got - want)[m:-m, m:-m].mean()
    assert err < 0.1 * np.abs(want[m:-m, m:-m]).mean(), err
    # the flow itself: the frame's pixels come from (-dx, -dy) in the key frame
    scale = plan.flow.shape[2] / key.shape[1]
    inner = plan.flow[:, 10:-10, 10:-10]
    assert np.allclose(np.median(inner[0]) / scale, -dx, atol=0.3) and np.allclose(np.median(inner[1]) / scale, -dy, atol=0.3)


def test_dense_flow_of_identical_frames_is_zero():
    rng = np.random.default_rng(1)
    import cv2

    g = cv2.GaussianBlur((rng.random((120, 160)) * 255).astype(np.uint8), (0, 0), 1.5)
    assert np.abs(dense_flow(g, g)).max() < 0.05


def _spliced(n_a: int = 6, n_b: int = 6) -> list[np.ndarray]:
    """Frames of the shared clip, then a slow pan over a photo (another real source), same size."""
    a = _clip_frames(n_a)
    h, w = a[0].shape[:2]
    big = _photo(w + 40, h + 20)
    b = [np.ascontiguousarray(big[10:10 + h, 2 * i:2 * i + w]) for i in range(n_b)]
    return a + b


@needs_data
def test_planner_restarts_at_a_scene_cut_and_keeps_the_interval():
    frames = _spliced()
    planner = KeyFramePlanner(4)
    box = [[220.0, 40.0, 420.0, 240.0]]  # the same box throughout: only the flow can see the cut
    plans = [planner.plan(i, f, box) for i, f in enumerate(frames)]
    kinds = [(p.kind, p.reason, p.ref) for p in plans]
    assert kinds[0] == ("key", "first", None)
    assert kinds[6] == ("key", "cut", None), kinds  # the first frame of the other source inherits nothing
    assert [p.kind for p in plans[1:4]] == ["propagated"] * 3 and all(p.ref == 0 for p in plans[1:4])
    assert kinds[4] == ("key", "interval", 0)  # a regular key frame: warm start from the previous key
    assert [(p.kind, p.ref) for p in plans[7:10]] == [("propagated", 6)] * 3
    assert plans[6].error > 15 > max(p.error for p in plans[1:6])


@needs_data
def test_gradual_change_within_a_shot_is_not_a_cut_but_drift_warm_starts():
    # stage lights brightening 4 grey levels a frame: each frame is close to the one before it (no
    # cut: the perturbation may be inherited), while the key frame several frames back drifts away
    base = _photo(640, 360).astype(np.float32)
    frames = [np.clip(base + 4 * i, 0, 255).astype(np.uint8) for i in range(12)]
    planner = KeyFramePlanner(100, cut_error=15)
    box = [[200.0, 80.0, 440.0, 320.0]]
    plans = [planner.plan(i, f, box) for i, f in enumerate(frames)]
    reasons = [p.reason for p in plans]
    assert "cut" not in reasons, reasons
    assert plans[4].kind == "propagated" and plans[4].error > 15, plans[4]  # past the old rule's cut line
    drift = next(p for p in plans if p.reason == "drift")  # past 2 x cut_error: a warm-started key frame
    assert drift.ref == 0 and drift.flow is not None and drift.error > 30
    assert all(p.kind == "propagated" and p.ref == drift.index for p in plans[drift.index + 1:drift.index + 4])


@needs_data
def test_a_cut_in_frames_without_faces_still_ends_the_key_frame():
    # the face leaves, the scene changes while no face is in view, a face comes back where the
    # old one was: it must not inherit the old scene's perturbation
    a, b = _clip_frames(3), _spliced()[6:]
    box = [[220.0, 40.0, 420.0, 240.0]]
    planner = KeyFramePlanner(100)
    assert planner.plan(0, a[0], box).kind == "key"
    assert planner.plan(1, a[1], []).kind == "none"
    assert planner.plan(2, b[0], []).kind == "none"  # the cut, with no face in view
    p = planner.plan(3, b[1], box)
    assert (p.kind, p.reason, p.ref) == ("key", "cut", None) and p.error > 15, p
    assert planner.plan(4, b[2], box).kind == "propagated"


def test_a_face_the_key_frame_does_not_have_makes_a_key_frame():
    rng = np.random.default_rng(2)
    import cv2

    img = cv2.GaussianBlur((rng.random((180, 320, 3)) * 255).astype(np.uint8), (0, 0), 2)
    planner = KeyFramePlanner(8)
    one = [[20.0, 20.0, 100.0, 100.0]]
    assert planner.plan(0, img, one).kind == "key"
    assert planner.plan(1, img, one).kind == "propagated"
    p = planner.plan(2, img, [*one, [200.0, 40.0, 280.0, 120.0]])
    assert (p.kind, p.reason, p.ref) == ("key", "new face", None)
    assert planner.plan(3, img, []).kind == "none"


def _write(path: Path, frames: list[np.ndarray]) -> Path:
    from lbcore.io import VideoWriter

    with VideoWriter(path, 30, codec="ffv1") as vw:
        for f in frames:
            vw.write(f)
    return path


@needs_data
def test_protect_restarts_at_the_cut_without_inheriting(tmp_path, tiny_plugin):
    from lbcore.apps.protection import protect
    from lbcore.io import iter_video_frames

    frames = _spliced()
    spliced = _write(tmp_path / "in" / "spliced.mkv", frames)
    alone = _write(tmp_path / "in2" / "second.mkv", frames[6:])
    kw = {"extractors": ("tiny",), "boxes": ((220.0, 40.0, 420.0, 240.0),), "device": "cpu", "steps": 3,
          "strength": "paper", "check_compression": False, "batch_size": 6, "key_interval": 4,
          "propagated_steps": 1}
    rep = protect([spliced], tmp_path / "out", **kw)["files"][0]
    assert rep["status"] == "protected" and rep["key_frames"] == 4, rep  # 0, 4 (interval), 6 (cut), 10 (interval)
    assert rep["key_frame_reasons"] == {"cut": 1, "first": 1, "interval": 2}, rep
    # the frame after the cut is protected exactly as if the video started there (nothing inherited)
    rep2 = protect([alone], tmp_path / "out2", **kw)["files"][0]
    assert rep2["status"] == "protected"
    out = list(iter_video_frames(rep["output"], max_frames=None))
    out2 = list(iter_video_frames(rep2["output"], max_frames=None))
    assert not np.array_equal(out[6], frames[6])
    assert np.array_equal(out[6], out2[0])
    # passes: key frames 3 each, propagated frames at most 1 each (one face per frame)
    assert rep["extractor_passes"] <= 4 * 3 + 8 * 1
    old = protect([spliced], tmp_path / "out3", **{**kw, "key_interval": 1})["files"][0]
    assert old["passes_per_face"] == 3 and old["key_frames"] is None and old["key_frame_reasons"] is None


@pytest.mark.parametrize("args", [["--key-interval", "0"], ["--key-interval", "1001"], ["--stop-nme", "-0.1"],
                                  ["--stop-margin", "0.9"], ["--propagated-steps", "-1"], ["--cut-error", "0"]])
def test_bad_key_frame_options_exit_2_in_one_line(tmp_path, args):
    from click.testing import CliRunner

    from lbcore.cli import cli

    res = CliRunner().invoke(cli, ["protect", str(tmp_path / "x.mp4"), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and args[0] in lines[0], res.output


def test_bad_key_frame_options_from_python(tmp_path):
    from lbcore.apps.protection import ProtectOptions, check_video_options
    from lbcore.errors import SpecError

    for bad in ({"key_interval": 0}, {"stop_nme": float("nan")}, {"stop_margin": 0.5}, {"cut_error": 300.0}):
        with pytest.raises(SpecError):
            check_video_options(ProtectOptions(**bad))
