"""The setup step that takes MediaPipe's model files out of the mediapipe wheel (no network here:
a wheel-shaped zip is built from the model files found in the weights folder)."""

from __future__ import annotations

import zipfile

import pytest

from lb_mediapipe.fetch import MEMBERS, fetch, weights_dir
from lbcore.errors import WeightsError


def _wheel(path, blobs):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in blobs.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def real_blobs(face_mesh_path, blazeface_path, attention_path):
    files = {p.name: p for p in (face_mesh_path, blazeface_path, attention_path)}
    return {m: files[e.filename].read_bytes() for m, e in MEMBERS.items()}


def test_unpacks_the_members_then_skips_when_present(tmp_path, real_blobs):
    whl = _wheel(tmp_path / "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
                 {**real_blobs, "mediapipe/other.py": b"x"})
    dest = tmp_path / "weights"
    said: list[str] = []
    paths = fetch(dest, whl, log=said.append)
    assert sorted(p.name for p in dest.iterdir()) == ["face_detection_short_range.tflite", "face_landmark.tflite",
                                                      "face_landmark_with_attention.tflite"]
    assert [p.read_bytes() for p in paths] == [real_blobs[m] for m in MEMBERS]
    assert len(said) == 3 and all(s.startswith("wrote ") for s in said)
    said.clear()
    fetch(dest, tmp_path / "absent.whl", log=said.append)  # nothing to do: the wheel is not even opened
    assert said == [f"MediaPipe model files already in {dest}"]


def test_a_wrong_member_or_a_wheel_without_them_is_an_error(tmp_path, real_blobs):
    first = next(iter(MEMBERS))
    bad = _wheel(tmp_path / "bad.whl", {**real_blobs, first: b"not the model"})
    with pytest.raises(WeightsError, match="face_landmark.tflite has sha256"):
        fetch(tmp_path / "w1", bad, log=lambda s: None)
    assert not (tmp_path / "w1" / "face_landmark.tflite").exists()
    empty = _wheel(tmp_path / "empty.whl", {"mediapipe/__init__.py": b""})
    with pytest.raises(WeightsError, match="cannot take the model files out of the wheel"):
        fetch(tmp_path / "w2", empty, log=lambda s: None)


def test_the_destination_follows_lb_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    assert weights_dir() == tmp_path
    monkeypatch.delenv("LB_WEIGHTS_DIR")
    assert weights_dir().parts[-2:] == ("landmark-breaker", "weights")
