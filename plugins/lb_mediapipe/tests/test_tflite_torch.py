"""The TFLite -> torch loader: same numbers as the TFLite runtime, one-line errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lb_mediapipe.extractor import FaceMeshExtractor, load_face_mesh
from lb_mediapipe.tflite_torch import TFLiteNet
from lbcore.errors import WeightsError
from lbcore.extractor import conv_outputs
from lbcore.io.annotations import box_from_landmarks
from lbcore.types import Faces


def _runtime(path: Path) -> object:
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="the TFLite runtime (pip install ai-edge-litert) is absent")
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def _run_tflite(it: object, x: np.ndarray) -> dict[str, np.ndarray]:
    it.set_tensor(it.get_input_details()[0]["index"], x)  # type: ignore[attr-defined]
    it.invoke()  # type: ignore[attr-defined]
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}  # type: ignore[attr-defined]


def test_face_mesh_matches_the_tflite_runtime_on_real_face_crops(face_mesh_path, faces68):
    """On crops of the annotated sample faces, the converted network's 468 points agree with
    TFLite's own interpreter to within 1e-3 of the crop size (192 px)."""
    torch.set_num_threads(1)
    it = _runtime(face_mesh_path)
    ext = FaceMeshExtractor(load_face_mesh(face_mesh_path)).eval()
    names = [d["name"] for d in it.get_output_details()]  # type: ignore[attr-defined]
    worst = 0.0
    for _name, img, gt in faces68:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        faces = Faces.from_lists([[box_from_landmarks(gt)]])
        theta = ext.crop_theta(faces.boxes)
        from lbcore.extractor import affine_crop

        crop = affine_crop(x, faces.image_index, theta, (192, 192)) / 255.0
        ref = _run_tflite(it, crop.permute(0, 2, 3, 1).contiguous().numpy())
        with torch.no_grad():
            mesh, flag = ext.net(crop)
        got_mesh = mesh.reshape(468, 3).numpy()
        ref_mesh = ref[names[0]].reshape(468, 3)
        err = float(np.abs(got_mesh[:, :2] - ref_mesh[:, :2]).max())
        worst = max(worst, err)
        assert err < 1e-3 * 192, (_name, err)
        assert abs(float(flag.reshape(())) - float(ref[names[1]].reshape(()))) < 1e-3
        # a real face: the points lie inside the crop and the presence logit is positive
        assert ref_mesh[:, :2].min() > 0 and ref_mesh[:, :2].max() < 192
        assert float(ref[names[1]].reshape(())) > 0
    assert worst > 0.0  # the comparison saw real numbers (not two empty arrays)


def test_blazeface_network_matches_the_tflite_runtime(blazeface_path, faces68):
    torch.set_num_threads(1)
    it = _runtime(blazeface_path)
    net = TFLiteNet(blazeface_path).eval()
    names = [d["name"] for d in it.get_output_details()]  # type: ignore[attr-defined]
    img = torch.from_numpy(faces68[-1][1]).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(img, size=(128, 128), mode="bilinear") / 127.5 - 1.0
    ref = _run_tflite(it, x.permute(0, 2, 3, 1).contiguous().numpy())
    with torch.no_grad():
        reg, cls = net(x)
    assert reg.shape == (1, 896, 16) and cls.shape == (1, 896, 1)
    assert np.abs(reg.numpy() - ref[names[0]]).max() < 1e-2  # input pixels of 128
    assert np.abs(cls.numpy() - ref[names[1]]).max() < 1e-2


def test_batches_give_the_same_outputs_as_single_images(face_mesh_path):
    net = load_face_mesh(face_mesh_path).eval()
    x = torch.rand(3, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        both = net(x)[0]
        one = net(x[1:2])[0]
    assert both.shape == (3, 1, 1, 1404)
    assert torch.allclose(both[1:2], one, atol=1e-3)


@pytest.mark.parametrize("model", ["mediapipe", "mediapipe-attention"])
def test_each_crop_gets_the_same_numbers_alone_and_in_a_batch(model, face_mesh_path, attention_path):
    """What lets photos share the meshes' network calls (``lb protect --photo-batch``): with
    oneDNN off, as the batcher runs them on the CPU, a crop's points and its gradient are
    bit-identical alone and at every position of a batch of up to 15 (PyTorch's own depthwise and
    1x1 convolution kernels were not: crops 1-3 of every 4 differed in the last bits)."""
    from lb_mediapipe import plugin

    ext = (plugin.mediapipe(weights=str(face_mesh_path)) if model == "mediapipe"
           else plugin.mediapipe_attention(weights=str(attention_path)))
    x = torch.rand(15, 3, 192, 192, generator=torch.Generator().manual_seed(3)) * 255

    def run(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crops = crops.clone().requires_grad_(True)
        points, _ = ext.forward_crops(crops)
        (grad,) = torch.autograd.grad((points[..., :2] - 96.0).square().sum(), crops)
        return points.detach(), grad

    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        points, grad = run(x)
        for i in (0, 1, 2, 3, 6, 14):
            p1, g1 = run(x[i:i + 1])
            assert torch.equal(p1[0], points[i]) and torch.equal(g1[0], grad[i]), i
        p2, g2 = run(x[5:7])
        assert torch.equal(p2, points[5:7]) and torch.equal(g2, grad[5:7])
    finally:
        torch.backends.mkldnn.enabled = before  # type: ignore[assignment]
    assert ext.shares_crops


def test_every_convolution_is_marked_for_the_attack_hooks(face_mesh_path):
    # feature_mix and ghost hook convolution outputs; the replayed graph runs F.conv2d, so each
    # CONV_2D / DEPTHWISE_CONV_2D output passes through one ConvOutput, in graph order
    net = load_face_mesh(face_mesh_path).eval()
    n_conv = sum(name in ("CONV_2D", "DEPTHWISE_CONV_2D") for name, *_ in net._steps)
    taps = conv_outputs(net)
    assert n_conv > 10 and len(taps) == n_conv
    seen: list[tuple[int, ...]] = []
    handles = [t.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape))) for t in taps]
    try:
        with torch.no_grad():
            net(torch.rand(1, 3, 192, 192))
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == n_conv and all(len(s) == 4 for s in seen)


def test_missing_empty_and_foreign_files_fail_in_one_line(tmp_path, blazeface_path):
    with pytest.raises(WeightsError, match="not found"):
        TFLiteNet(tmp_path / "nope.tflite")
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="too short"):
        TFLiteNet(empty)
    other = tmp_path / "ckpt.tflite"
    other.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(WeightsError, match=r"ckpt\.tflite: not a TFLite model"):
        TFLiteNet(other)
    # a truncated model: the flatbuffer's offsets point past its end
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(Path(blazeface_path).read_bytes()[:5000])
    with pytest.raises(WeightsError, match=r"cut\.tflite: corrupt TFLite model|cut\.tflite"):
        TFLiteNet(cut)
    # the detector is a valid model but not a face mesh
    with pytest.raises(WeightsError) as info:
        load_face_mesh(blazeface_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "face_detection_short_range.tflite: not a MediaPipe face mesh model" in msg
    assert "[1, 128, 128, 3]" in msg


def test_unsupported_operator_is_named(tmp_path, face_mesh_path):
    """A model using an operator the loader lacks: the error names the file and the operator.

    Made by renaming the PRELU opcode of the real face mesh to SOFTMAX: the opcode table is
    tiny and this file stores each code in the one-byte ``deprecated_builtin_code`` field."""
    tflite = pytest.importorskip("tflite")
    data = bytearray(Path(face_mesh_path).read_bytes())
    model = tflite.Model.GetRootAsModel(data, 0)
    changed = 0
    for i in range(model.OperatorCodesLength()):
        tab = model.OperatorCodes(i)._tab
        dep = tab.Offset(4)  # deprecated_builtin_code (int8), vtable slot 0
        if dep and data[tab.Pos + dep] == tflite.BuiltinOperator.PRELU and not tab.Offset(10):
            data[tab.Pos + dep] = tflite.BuiltinOperator.SOFTMAX
            changed += 1
    assert changed == 1
    bad = tmp_path / "softmax.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as info:
        load_face_mesh(bad)
    msg = str(info.value)
    assert "softmax.tflite: unsupported TFLite operator SOFTMAX" in msg and "\n" not in msg
