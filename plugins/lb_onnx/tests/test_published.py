"""The published files face-swap tools download: registration, weights=auto, and each
description's geometry checked on stand-in graphs with the same inputs and outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lb_onnx.export import export_module
from lbcore.errors import WeightsError
from lbcore.testing import check_extractor
from lbcore.types import Faces

BOX = [40.0, 30.0, 140.0, 160.0]  # x1, y1, x2, y2: taller than wide


class _Constant(torch.nn.Module):
    """Fixed outputs that depend a very little on the input (so gradients exist)."""

    def __init__(self, *outs: torch.Tensor) -> None:
        super().__init__()
        for i, o in enumerate(outs):
            self.register_buffer(f"o{i}", o)
        self.n = len(outs)

    def forward(self, x: torch.Tensor):
        z = 1e-5 * x.mean(dim=(1, 2, 3))
        outs = []
        for i in range(self.n):
            o = getattr(self, f"o{i}")
            outs.append(o.expand(x.shape[0], *o.shape[1:]) + z.view(-1, *([1] * (o.dim() - 1))))
        outs = tuple(outs)
        return outs if self.n > 1 else outs[0]


def _predict(ext, size=(200, 180)):
    images = torch.rand(1, 3, size[0], size[1]) * 255
    return ext.predict(images, Faces.from_lists([[BOX]]))[0].numpy()


def test_import_does_not_load_torch():
    code = "import sys, lb_onnx.plugin, lb_onnx.description; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registered_with_their_published_files(fresh_pm):
    want = {
        "2dfan4-onnx": ("2dfan4.onnx", "https://github.com/facefusion/facefusion-assets/releases/download/models-3.0.0/2dfan4.onnx"),
        "peppa-wutz": ("peppa_wutz.onnx", "https://github.com/facefusion/facefusion-assets/releases/download/models-3.0.0/peppa_wutz.onnx"),
        "2d106det": ("2d106det.onnx", None),
    }
    for name, (filename, url) in want.items():
        comp = fresh_pm.get("extractors", name)
        assert comp.distribution == "lb-onnx"
        (w,) = comp.metadata["weights"]
        assert (w.filename, w.url, w.sha256) == (filename, url, None)
    assert "buffalo_l.zip" in fresh_pm.get("extractors", "2d106det").metadata["weights"][0].note
    assert "onnx" in fresh_pm.components("extractors")


def test_missing_published_file_says_where_it_is(fresh_pm, tmp_path, monkeypatch):
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as err:
        fresh_pm.build("extractors", "2dfan4-onnx")
    assert "models-3.0.0/2dfan4.onnx" in str(err.value) and "\n" not in str(err.value)


def test_2dfan4_found_in_the_weights_folder_and_decoded_like_facefusion(fresh_pm, tmp_path, monkeypatch):
    v = torch.rand(1, 68, 3) * 64  # landmarks in 64-cell units (+ a score column)
    hm = torch.rand(1, 68, 64, 64)
    export_module(_Constant(v, hm), tmp_path / "2dfan4.onnx", 256, dynamic=False, outputs=("lm", "hm"))
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    ext = fresh_pm.build("extractors", "2dfan4-onnx")  # weights=auto finds the file
    assert ext.batch == 1 and ext.desc.normalise.channels == "BGR"
    # FaceFusion: crop = frame * s + t with s = 195 / longer side, t = (256 - (x1 + x2, y1 + y2) s) / 2
    s = 195 / max(BOX[2] - BOX[0], BOX[3] - BOX[1])
    t = (256 - np.array([BOX[0] + BOX[2], BOX[1] + BOX[3]]) * s) / 2
    want = (v[0, :, :2].numpy() / 64 * 256 - t) / s
    assert np.allclose(_predict(ext), want, atol=1e-3)
    check_extractor(ext)


def test_peppa_wutz_decoded_like_facefusion(fresh_pm, tmp_path):
    v = torch.rand(1, 68 * 3) * 64
    path = export_module(_Constant(v), tmp_path / "peppa.onnx", 256, dynamic=False)
    ext = fresh_pm.build("extractors", f"peppa-wutz:weights={path}")
    s = 195 / max(BOX[2] - BOX[0], BOX[3] - BOX[1])
    t = (256 - np.array([BOX[0] + BOX[2], BOX[1] + BOX[3]]) * s) / 2
    want = (v.reshape(68, 3)[:, :2].numpy() / 64 * 256 - t) / s
    assert np.allclose(_predict(ext), want, atol=1e-3)


def test_2d106det_decoded_like_insightface(fresh_pm, tmp_path):
    v = torch.rand(1, 212) * 2 - 1
    path = export_module(_Constant(v), tmp_path / "2d106det.onnx", 192)
    ext = fresh_pm.build("extractors", f"2d106det:weights={path}")
    assert ext.scheme.num_points == 106 and ext.scheme.eye_corners == (38, 88)
    # InsightFace: crop = (frame - centre) * s + 96 with s = 192 / (1.5 * longer side)
    s = 192 / (1.5 * max(BOX[2] - BOX[0], BOX[3] - BOX[1]))
    c = np.array([BOX[0] + BOX[2], BOX[1] + BOX[3]]) / 2
    want = ((v.reshape(106, 2).numpy() + 1) * 96 - 96) / s + c
    assert np.allclose(_predict(ext), want, atol=1e-3)
    measured = check_extractor(ext)
    assert measured["points"] == 106


def test_normalisation_follows_the_description(fresh_pm, tmp_path):
    """2d106det: RGB, (x - 127.5) / 128; 2dfan4: BGR / 255 - checked on a graph that outputs its input."""
    from lb_onnx.description import load_description
    from lb_onnx.extractor import OnnxExtractor

    crops = torch.rand(2, 3, 8, 8) * 255
    ins = load_description("2d106det")
    ext = OnnxExtractor(torch.nn.Identity(), ins)
    assert torch.allclose(ext.normalise(crops), (crops - 127.5) / 128)
    ff = OnnxExtractor(torch.nn.Identity(), load_description("2dfan4"))
    assert torch.allclose(ff.normalise(crops), crops.flip(1) / 255)


def test_weights_list_shows_them(tmp_path):
    lb = [sys.executable, "-m", "lbcore"]
    out = subprocess.run([*lb, "weights", "list", "--json"], capture_output=True, text=True,
                         env={"PATH": "", "LB_WEIGHTS_DIR": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    import json

    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["2dfan4-onnx"]["extractor"] == "2dfan4-onnx" and rows["2dfan4-onnx"]["found"] is None
    assert rows["peppa-wutz"]["url"].endswith("peppa_wutz.onnx")
    assert rows["mtcnn-onet"]["sha256"]


def test_only_present_face_swap_files_join_the_default_protect_set(fresh_pm, tmp_path, monkeypatch):
    """The generic ``onnx`` and MTCNN (setup.sh puts onet.pt into every cache) are used only when
    named; FaceFusion's and InsightFace's files join lb protect's default ensemble when present."""
    from lbcore.apps.protection import plan_default_ensemble

    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("onnx", "mtcnn-onet", "mtcnn-onet-onnx"):
        assert fresh_pm.get("extractors", name).metadata["default"] is False
    plan = {m.label: m for m in plan_default_ensemble(fresh_pm)}
    assert not set(plan) & {"onnx", "mtcnn-onet", "mtcnn-onet-onnx"}
    assert all(plan[n].missing for n in ("2dfan4-onnx", "peppa-wutz", "2d106det"))
    entry = fresh_pm.get("extractors", "peppa-wutz").metadata["weights"][0]
    (tmp_path / entry.filename).write_bytes(b"stand-in")
    labels = {m.label for m in plan_default_ensemble(fresh_pm)}
    assert f"peppa-wutz ({entry.name})" in labels and "peppa-wutz" not in labels


def test_keras_export_layout_and_same_padding(tmp_path):
    """A graph like MTCNN's Keras-born ONNX: transposed NHWC input (x before y), SAME_UPPER
    max-pooling, planar (all x, then all y) coordinates."""
    import onnx
    from onnx import TensorProto, helper

    from lb_onnx.convert import to_torch
    from lb_onnx.description import description_from_mapping
    from lb_onnx.plugin import build_onnx_extractor

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 5, 5, 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 3, 3])
    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 2, 1]),
             helper.make_node("MaxPool", ["t"], ["output"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 12)])
    path = tmp_path / "same.onnx"
    onnx.save(model, str(path))
    net, _ = to_torch(path, 5, "nwhc")
    inp = torch.randn(1, 5, 5, 3)
    ref = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(inp.permute(0, 3, 2, 1), (0, 1, 0, 1), value=float("-inf")), 2, 2)
    assert torch.equal(net(inp), ref)
    with pytest.raises(WeightsError) as err:
        to_torch(path, 5, "nchw")
    assert "[NCHW]" in str(err.value)

    class Planar(torch.nn.Module):
        def forward(self, t):  # (N, W, H, 3): 2 points, x then y, in window fractions
            base = torch.tensor([0.25, 0.75, 0.5, 0.5]).expand(t.shape[0], 4)
            return base + 1e-6 * t.mean(dim=(1, 2, 3)).unsqueeze(1)

    path2 = export_module(Planar(), tmp_path / "planar.onnx", 48)  # exported NCHW-shaped, fine for a mean
    desc = description_from_mapping({
        "points": 2, "eye_corners": [0, 1], "input_size": 48, "crop": {"side": "max", "align": "area", "supersample": 2},
        "normalise": {"divide": 1.0, "mean": 127.5, "std": 128.0},
        "decode": {"kind": "coords", "coords_layout": "planar", "coords_scale": 48.0, "coords_shift": -0.5,
                   "heatmap_output": "none"}})
    ext = build_onnx_extractor(str(path2), desc)
    lm = _predict(ext)
    side = max(BOX[2] - BOX[0], BOX[3] - BOX[1])
    cx, cy = (BOX[0] + BOX[2]) / 2, (BOX[1] + BOX[3]) / 2
    want = np.array([[cx - side / 4, cy], [cx + side / 4, cy]])
    assert np.allclose(lm, want, atol=1e-2)
