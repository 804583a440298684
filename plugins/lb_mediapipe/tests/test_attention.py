"""The mediapipe-attention extractor: MediaPipe's custom operators on inputs with known answers,
the refinement, the rebuilt graph against MediaPipe's own landmarks, registration and bad files."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lb_mediapipe.plugin as plugin
from lb_mediapipe import mediapipe_ops as mpo
from lb_mediapipe.attention import (
    LEFT_EYE,
    LIPS,
    RIGHT_EYE,
    load_attention_mesh,
    refine,
)
from lbcore.errors import WeightsError
from lbcore.io.annotations import box_from_landmarks
from lbcore.metrics import nme
from lbcore.types import Faces

REFERENCE = Path(__file__).parent / "data" / "attention_reference.npz"


@pytest.fixture(scope="module")
def ext(attention_path):
    torch.set_num_threads(1)
    return plugin.mediapipe_attention(weights=str(attention_path))


# -- the custom operators -------------------------------------------------------------------

def _box_landmarks(angle: float) -> torch.Tensor:
    """Six points: the corners of a 20 x 8 rectangle centred at (20, 24) turned by ``angle``, then
    the 'left' and 'right' rotation points on its long axis."""
    local = torch.tensor([[-10.0, -4.0], [10.0, -4.0], [10.0, 4.0], [-10.0, 4.0], [-5.0, 0.0], [5.0, 0.0]])
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]])
    xy = local @ rot.T + torch.tensor([20.0, 24.0])
    return torch.cat([xy, torch.zeros(6, 1)], 1)[None]


@pytest.mark.parametrize("angle", [0.0, 0.5, -1.2])
def test_landmarks_to_transform_matrix_crops_the_subset_box_scaled_and_turned(angle):
    m = mpo.landmarks_to_transform_matrix(_box_landmarks(angle), left=4, right=5, subset=[0, 1, 2, 3],
                                          out_w=16, out_h=16, scale_x=1.5, scale_y=1.5)
    assert m.shape == (1, 4, 4)
    # output centre (8, 8) -> the rectangle's centre; the crop's x axis runs along the long side,
    # 1.5 x 20 / 16 input units per output pixel, its y axis 1.5 x 8 / 16
    centre = m[0, :2, :2] @ torch.tensor([8.0, 8.0]) + m[0, :2, 3]
    assert torch.allclose(centre, torch.tensor([20.0, 24.0]), atol=1e-4)
    c, s = math.cos(angle), math.sin(angle)
    assert torch.allclose(m[0, :2, 0], 1.5 * 20 / 16 * torch.tensor([c, s]), atol=1e-5)
    assert torch.allclose(m[0, :2, 1], 1.5 * 8 / 16 * torch.tensor([-s, c]), atol=1e-5)
    assert torch.equal(m[0, 2:], torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    assert float(m[0, 0, 2]) == 0.0 and float(m[0, 1, 2]) == 0.0


def _affine(a: list[list[float]], t: list[float]) -> torch.Tensor:
    m = torch.eye(4)[None].clone()
    m[0, :2, :2] = torch.tensor(a)
    m[0, :2, 3] = torch.tensor(t)
    return m


def test_transform_tensor_bilinear_samples_pixel_centres_with_zeros_outside():
    # a ramp: channel 0 holds the column index, channel 1 the row index (bilinear reproduces it)
    h, w = 6, 8
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x = torch.stack([xs, ys])[None]
    ident = mpo.transform_tensor_bilinear(x, _affine([[1, 0], [0, 1]], [0, 0]), h, w)
    assert torch.allclose(ident, x, atol=1e-5)
    # shift by (1.25, 0.5): values follow, columns past the last pixel centre are zero
    y = mpo.transform_tensor_bilinear(x, _affine([[1, 0], [0, 1]], [1.25, 0.5]), h, w)
    assert torch.allclose(y[0, 0, :5, :6], xs[:5, :6] + 1.25, atol=1e-5)
    assert torch.allclose(y[0, 1, :5, :6], ys[:5, :6] + 0.5, atol=1e-5)
    assert float(y[:, :, :, 6:].abs().sum()) == 0.0 and float(y[:, :, 5:, :].abs().sum()) == 0.0
    # scale 2 (a 3 x 4 output covering the whole input): with the half-pixel rule output pixel
    # centre u + 0.5 maps to 2u + 1, i.e. input coordinate 2u + 0.5
    z = mpo.transform_tensor_bilinear(x, _affine([[2, 0], [0, 2]], [0, 0]), 3, 4)
    assert torch.allclose(z[0, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]), atol=1e-5)
    assert torch.allclose(z[0, 1, :, 0], torch.tensor([0.5, 2.5, 4.5]), atol=1e-5)


def test_transform_landmarks_maps_xy_and_keeps_z():
    m = _affine([[0.0, -2.0], [2.0, 0.0]], [10.0, 20.0])
    pts = torch.tensor([[[1.0, 0.0, 7.0], [0.0, 1.0, -3.0]]])
    out = mpo.transform_landmarks(pts, m)
    assert torch.allclose(out, torch.tensor([[[10.0, 22.0, 7.0], [8.0, 20.0, -3.0]]]))
    assert mpo.transform_landmarks(pts[..., :2], m).shape == (1, 2, 2)


def test_the_custom_operators_are_differentiable():
    """Gradients (float64 gradcheck) through the matrix, the sampling and the point mapping."""
    lm = (_box_landmarks(0.3).double() + 0.1 * torch.randn(1, 6, 3, dtype=torch.float64,
                                                            generator=torch.Generator().manual_seed(1)))
    feat = torch.rand(1, 2, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lm.requires_grad_(True)
    feat.requires_grad_(True)

    def f(lm: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        m = mpo.landmarks_to_transform_matrix(lm, left=4, right=5, subset=[0, 1, 2, 3], out_w=4, out_h=4,
                                              scale_x=1.5, scale_y=1.5)
        return torch.cat([mpo.transform_tensor_bilinear(feat, m, 4, 4).reshape(-1),
                          mpo.transform_landmarks(lm, m).reshape(-1)])

    assert torch.autograd.gradcheck(f, (lm, feat), eps=1e-6, atol=1e-5)


def test_refinement_writes_parts_into_the_mesh_and_appends_irises():
    g = torch.Generator().manual_seed(0)
    mesh = torch.rand(2, 468, 3, generator=g)
    parts = [torch.rand(2, n, 2, generator=g) for n in (80, 71, 71, 5, 5)]
    out = refine(mesh, *parts)
    assert out.shape == (2, 478, 3)
    assert torch.equal(out[:, list(LIPS), :2], parts[0])
    assert torch.equal(out[:, list(LEFT_EYE), :2], parts[1])
    assert torch.equal(out[:, list(RIGHT_EYE), :2], parts[2])
    assert torch.equal(out[..., 2][:, :468], mesh[..., 2])  # z is the mesh's
    untouched = sorted(set(range(468)) - set(LIPS) - set(LEFT_EYE) - set(RIGHT_EYE))
    assert torch.equal(out[:, untouched], mesh[:, untouched])
    assert torch.equal(out[:, 468:473, :2], parts[3]) and torch.equal(out[:, 473:, :2], parts[4])
    assert torch.allclose(out[:, 468:473, 2], mesh[:, list(LEFT_EYE[:16]), 2].mean(1, keepdim=True).expand(2, 5))
    assert torch.allclose(out[:, 473:, 2], mesh[:, list(RIGHT_EYE[:16]), 2].mean(1, keepdim=True).expand(2, 5))


# -- the real network -------------------------------------------------------------------------

def test_refinement_of_mixed_precision_outputs_is_float32():
    """Under bf16 autocast (``--amp bf16``) the mesh comes out in bf16 and some parts in float32."""
    g = torch.Generator().manual_seed(0)
    mesh = torch.rand(2, 468, 3, generator=g).bfloat16()
    parts = [torch.rand(2, n, 2, generator=g) for n in (80, 71, 71, 5, 5)]
    out = refine(mesh, *parts)
    assert out.dtype == torch.float32 and torch.equal(out[:, list(LIPS), :2], parts[0])


def test_the_rebuilt_graph_matches_mediapipe_itself_on_the_sample_faces(ext, faces68):
    """MediaPipe 0.10.21's FaceLandmarkCpu graph (with attention; tools/attention_reference.py) on
    the same uint8 crops gave the 478 landmarks in tests/data; the torch network agrees within
    1e-3 of the crop size (measured: 7.6e-5 px)."""
    from lbcore.extractor import affine_crop

    ref = np.load(REFERENCE)
    assert [str(n) for n in ref["names"]] == [n for n, _i, _g in faces68]
    worst = 0.0
    for k, (_name, img, gt) in enumerate(faces68):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        faces = Faces.from_lists([[box_from_landmarks(gt)]])
        crop = affine_crop(x, faces.image_index, ext.crop_theta(faces.boxes), (192, 192)).round().clamp(0, 255)
        with torch.no_grad():
            mesh, flag = ext.forward_crops(crop)
        assert mesh.shape == (1, 478, 3) and float(flag[0]) > 0
        err = float(np.abs(mesh[0, :, :2].numpy() - 192 * ref["landmarks"][k, :, :2]).max())
        worst = max(worst, err)
        assert err < 1e-3 * 192, (_name, err)
        assert np.abs(mesh[0, :, 2].numpy() / 192 - ref["landmarks"][k, :, 2]).max() < 1e-3
    assert worst > 0.0


def test_the_attention_crops_change_the_lips_and_eyes(attention_path, faces68):
    """The refined points differ from the network's own first estimate (the custom-op branch is live)."""
    net = load_attention_mesh(attention_path).eval()
    img = torch.from_numpy(faces68[3][1]).permute(2, 0, 1)[None].float()
    crop = torch.nn.functional.interpolate(img, size=(192, 192), mode="bilinear") / 255.0
    with torch.no_grad():
        mesh, lips, *_ = net(crop)
    moved = (lips.reshape(80, 2) - mesh.reshape(468, 3)[list(LIPS), :2]).norm(dim=-1)
    assert 0.01 < float(moved.mean()) < 10.0  # refined, but near the first estimate (192-px crop)


def test_extractor_on_the_annotated_faces_and_its_gradient(ext, faces68):
    errors = []
    for _name, img, gt in faces68:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        out = ext(x, Faces.from_lists([[box_from_landmarks(gt)]]))
        assert out.extra["mesh"].shape == (1, 478, 2) and out.landmarks.shape == (1, 68, 2)
        errors.append(float(nme(ext.decode(out)[0].detach().numpy(), gt)))
    # measured: breakingbad 0.118, einstein 0.071, lenna 0.064, takeo 0.044 (the plain mesh: 0.137-0.051)
    assert max(errors) < 0.13 and float(np.median(errors)) < 0.08, errors
    x = torch.from_numpy(faces68[2][1]).permute(2, 0, 1)[None].float().requires_grad_(True)
    out = ext(x, Faces.from_lists([[box_from_landmarks(faces68[2][2])]]))
    (g,) = torch.autograd.grad(out.landmarks[0, 62].sum() + out.heatmaps.sum(), x)  # an inner-lip point
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


def test_registered_with_the_published_weights_and_its_default_flag(fresh_pm):
    comp = fresh_pm.get("extractors", "mediapipe-attention")
    assert comp.distribution == "lb-mediapipe"
    (w,) = comp.metadata["weights"]
    assert w.filename == "face_landmark_with_attention.tflite" and w.size == 2_495_106
    assert w.url.startswith("https://storage.googleapis.com/mediapipe-assets/face_landmark_with_attention.tflite")
    assert comp.metadata.get("default", True) is plugin.DEFAULT_ATTENTION


def test_a_plain_face_mesh_or_a_wrong_file_is_refused_in_one_line(tmp_path, monkeypatch, face_mesh_path):
    with pytest.raises(WeightsError) as info:
        load_attention_mesh(face_mesh_path)
    msg = str(info.value)
    assert "face_landmark.tflite: not a MediaPipe attention face mesh model" in msg and "\n" not in msg
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "face_landmark_with_attention.tflite").write_bytes(Path(face_mesh_path).read_bytes())
    with pytest.raises(WeightsError, match="does not match the published 'mediapipe-face-landmark-with-attention'"):
        plugin.mediapipe_attention()


def test_cli_bad_weights_exit_3(tmp_path, faces68):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model at all, just bytes")
    img = sorted(Path(__file__).resolve().parents[3].glob("shared/data/faces68/lenna.png")) or [
        Path("/work/shared/data/faces68/lenna.png")]
    lb = Path(sys.executable).with_name("lb")
    done = subprocess.run([str(lb), "protect", str(img[0]), "-o", str(tmp_path / "out"), "--extractor",
                           f"mediapipe-attention:weights={bad}"], capture_output=True, text=True, check=False)
    assert done.returncode == 3, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "bad.tflite" in ln]
    assert len(lines) == 1 and "not a TFLite model" in lines[0], done.stderr
