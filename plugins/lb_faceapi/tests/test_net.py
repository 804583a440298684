"""face-api.js's landmark networks read from their TensorFlow.js files: the reader, the layout,
agreement with face-api.js's own code (TensorFlow.js), and one-line errors for bad files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lb_faceapi.net import FaceLandmarkNet, load_face_landmark_net, read_tfjs_weights
from lbcore.errors import WeightsError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))


def test_the_reader_dequantises_as_tensorflow_js(tmp_path):
    """uint8 tensors are ``q * scale + min``; float32 tensors are read as they are; in manifest order."""
    q = np.array([0, 1, 255, 7], dtype=np.uint8)
    f = np.array([[1.5, -2.0]], dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(q.tobytes() + f.tobytes())
    manifest = [{"paths": ["w.bin"], "weights": [
        {"name": "a", "shape": [2, 2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "b", "shape": [1, 2], "dtype": "float32"}]}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    got = read_tfjs_weights(tmp_path / "m.json")
    np.testing.assert_allclose(got["a"], [[-1.0, -0.5], [126.5, 2.5]])
    np.testing.assert_array_equal(got["b"], f)


@pytest.mark.parametrize("tiny", [False, True])
def test_the_published_files_load_strictly(tiny, full_path, tiny_path):
    net = load_face_landmark_net(tiny_path if tiny else full_path)
    assert net.tiny is tiny
    assert len(net.blocks) == (3 if tiny else 4)
    # the wrong layout for the file is refused, naming what is missing or unexpected
    other = FaceLandmarkNet(tiny=not tiny)
    with pytest.raises(WeightsError, match="not face-api.js's .* landmark model"):
        other.load_tfjs(read_tfjs_weights(tiny_path if tiny else full_path), "x.json")


@pytest.mark.parametrize("which", ["full", "tiny"])
def test_agrees_with_face_api_js_own_code(which, full_path, tiny_path):
    """Reference: face-api.js 1.7.15's ``detectLandmarks`` on TensorFlow.js 4.22's CPU backend
    (``tools/make_reference.py``) on two astronaut crops and a noise crop. Measured: within
    2e-5 crop pixels (float32 rounding)."""
    from make_reference import reference_crops

    ref = np.load(HERE / "data" / "tfjs_reference.npz")[which]
    net = load_face_landmark_net(tiny_path if which == "tiny" else full_path)
    crops = torch.from_numpy(reference_crops()).permute(0, 3, 1, 2)
    with torch.no_grad():
        got = net(crops).numpy() * 112
    assert got.shape == ref.shape == (3, 68, 2)
    assert float(np.abs(got - ref).max()) < 1e-3


def test_bad_files_get_one_line_errors(tmp_path, full_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(WeightsError, match=r"x.json: not a JSON weights manifest"):
        read_tfjs_weights(bad)
    bad.write_text(json.dumps({"a": 1}))
    with pytest.raises(WeightsError, match="not a TensorFlow.js weights manifest"):
        read_tfjs_weights(bad)
    manifest = json.loads(full_path.read_text())
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="its weights file 'face_landmark_68_model.bin' is not beside it"):
        read_tfjs_weights(tmp_path / "m.json")
    binary = (full_path.parent / "face_landmark_68_model.bin").read_bytes()
    (tmp_path / "face_landmark_68_model.bin").write_bytes(binary[:-10])
    with pytest.raises(WeightsError, match="too short for tensor 'fc/bias'"):
        read_tfjs_weights(tmp_path / "m.json")
    (tmp_path / "face_landmark_68_model.bin").write_bytes(binary + b"\0")
    with pytest.raises(WeightsError, match="the manifest describes 356840"):
        read_tfjs_weights(tmp_path / "m.json")
    manifest[0]["paths"] = ["../face_landmark_68_model.bin"]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="is not beside it"):
        read_tfjs_weights(tmp_path / "m.json")
