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
