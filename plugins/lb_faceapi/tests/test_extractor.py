"""The faceapi68 extractors: contract (conformance kit), accuracy on real faces, gradients,
registration, spec and weights errors, and the attack moving the points."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import lb_faceapi.plugin as plugin
from lbcore.errors import SpecError, WeightsError
from lbcore.io.annotations import box_from_landmarks
from lbcore.metrics import nme
from lbcore.testing import check_component
from lbcore.types import Faces


@pytest.fixture(scope="module")
def ext(full_path):
    torch.set_num_threads(1)
    return plugin.faceapi68(weights=str(full_path))


def test_conformance_kit_passes(ext, tiny_path):
    for component in (ext, plugin.faceapi68_tiny(weights=str(tiny_path))):
        measured = check_component("extractor", component)
        assert measured["points"] == 68
        assert measured["grad_abs_sum"] > 0


@pytest.mark.parametrize("tiny", [False, True])
def test_landmarks_on_the_annotated_faces(tiny, ext, tiny_path, faces68):
    """Clean accuracy against the human iBUG-68 markup, the face box taken from the markup.
    Measured (full / tiny): breakingbad 0.094 / 0.115, einstein 0.063 / 0.092, lenna 0.047 / 0.056,
    takeo 0.055 / 0.052 (the markup's tight box, not a detector's)."""
    # the square crop (a square around the given box): face-api.js's own box is not the markup's
    e = (plugin.faceapi68_tiny if tiny else plugin.faceapi68)(weights=str(tiny_path if tiny else ext_path(ext)),
                                                             crop="square")
    errors = {}
    for name, img, gt in faces68:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        errors[name] = float(nme(e.predict(x, Faces.from_lists([[box_from_landmarks(gt)]]))[0].numpy(), gt))
    assert max(errors.values()) < (0.14 if tiny else 0.12), errors
    assert float(np.median(list(errors.values()))) < (0.09 if tiny else 0.08), errors


def ext_path(ext):
    from lb_faceapi.plugin import FULL_WEIGHTS
    from lbcore.weights import resolve_weights

    return resolve_weights(FULL_WEIGHTS)


def test_the_faceapi_crop_pads_beside_face_api_js_box_and_samples_as_tensorflow_js(ext):
    """``crop="faceapi"``: the square of face-api.js's own box (0.89 x 1.33 of the given box, 0.10
    of its height higher), zero columns beside that box (face-api.js pads it to a square), and the
    TensorFlow.js resize grid (crop pixel u reads the square's pixel u * side / 112)."""
    from lb_faceapi.extractor import SSD_DY, SSD_H, SSD_W

    seen = []
    hook = ext.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        x = torch.full((1, 3, 400, 400), 200.0)
        ext(x, Faces.from_lists([[(100.0, 100.0, 200.0, 200.0)]]))
    finally:
        hook.remove()
    (crops,) = seen
    side = SSD_H * 100
    theta = ext.crop_theta(torch.tensor([[100.0, 100.0, 200.0, 200.0]]))[0]
    assert abs(float(theta[0, 0]) - side / 112) < 1e-4
    assert abs(float(theta[0, 2]) - (150 - side / 2 + 0.5)) < 1e-4
    assert abs(float(theta[1, 2]) - (150 + SSD_DY * 100 - side / 2 + 0.5)) < 1e-4
    band = SSD_W / SSD_H * 112  # columns of the box inside the square
    cols = crops[0, 0].amax(0)
    assert float(cols[56]) == 200.0
    assert int((cols == 0).sum()) in (round(112 - band) - 1, round(112 - band), round(112 - band) + 1)
    assert float(cols[0]) == 0.0 and float(cols[111]) == 0.0
    # a larger square (scale 1.2) keeps the box's width of image: more zero columns
    from lb_faceapi.extractor import FaceApiExtractor

    wide = FaceApiExtractor(ext.net, 1.2)
    hook = wide.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        wide(x, Faces.from_lists([[(100.0, 100.0, 200.0, 200.0)]]))
    finally:
        hook.remove()
    zeros = int((seen[-1][0, 0].amax(0) == 0).sum())
    assert abs(zeros - (112 - band / 1.2)) <= 1.5


def test_the_gradient_reaches_the_full_image_through_the_crop(ext, faces68):
    _name, img, gt = faces68[2]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().requires_grad_(True)
    box = box_from_landmarks(gt)
    out = ext(x, Faces.from_lists([[box]]))
    (g_lm,) = torch.autograd.grad(out.landmarks[0, 36, 0], x, retain_graph=True)
    (g_hm,) = torch.autograd.grad(out.heatmaps.sum(), x)
    x1, y1, x2, y2 = (int(v) for v in box)
    for g in (g_lm, g_hm):
        assert bool(torch.isfinite(g).all())
        assert float(g[..., y1:y2, x1:x2].abs().sum()) > 0
        assert float(g[..., : max(y1 - 150, 0), :].abs().sum()) == 0.0  # nothing outside the crop square


def test_rendered_heatmaps_peak_at_the_landmarks(ext, faces68):
    from lbcore.extractor import apply_affine, soft_argmax

    _name, img, gt = faces68[3]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        out = ext(x, Faces.from_lists([[box_from_landmarks(gt)]]))
    placed = apply_affine(out.hm_to_image, soft_argmax(out.heatmaps, 0.01))
    cell = float(out.hm_to_image[0, 0, 0])
    assert float((placed - out.landmarks).norm(dim=-1).max()) < cell


def test_registered_with_the_published_weights(fresh_pm):
    comp = fresh_pm.get("extractors", "faceapi68")
    assert comp.distribution == "lb-faceapi"
    (w,) = comp.metadata["weights"]
    assert w.filename == "face_landmark_68_model-weights_manifest.json"
    assert w.licence == "MIT"
    # attacked by lb protect's default ensemble; the tiny variant only when named
    assert comp.metadata["default"] is True and not comp.metadata.get("measure")
    assert fresh_pm.get("extractors", "faceapi68-tiny").metadata["default"] is False


def test_spec_errors_and_weights_errors(tmp_path, tiny_path, fresh_pm):
    with pytest.raises(SpecError, match="scale"):
        fresh_pm.build("extractors", "faceapi68:scale=9")
    with pytest.raises(SpecError, match="sigma"):
        fresh_pm.build("extractors", "faceapi68:sigma=0")
    with pytest.raises(WeightsError, match="weights=none"):
        fresh_pm.build("extractors", "faceapi68:weights=none")
    with pytest.raises(WeightsError, match="not found"):
        fresh_pm.build("extractors", f"faceapi68:weights={tmp_path / 'x.json'}")
    # the tiny model's manifest given to the full extractor
    with pytest.raises(WeightsError, match="not face-api.js's full 68-point landmark model"):
        fresh_pm.build("extractors", f"faceapi68:weights={tiny_path}")


def test_a_wrong_file_under_the_published_name_is_refused(tmp_path, monkeypatch, full_path, tiny_path):
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / full_path.name).write_bytes(full_path.read_bytes())
    with pytest.raises(WeightsError, match="face_landmark_68_model.bin: missing"):
        plugin.faceapi68()
    binary = bytearray((full_path.parent / "face_landmark_68_model.bin").read_bytes())
    binary[100] ^= 1
    (tmp_path / "face_landmark_68_model.bin").write_bytes(bytes(binary))
    with pytest.raises(WeightsError, match="sha256 .* does not match @vladmandic/face-api@1.7.15's copy"):
        plugin.faceapi68()


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, lb_faceapi.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_paper_attack_moves_the_points_on_a_real_face(ext, faces68):
    """A few MI-FGSM steps on Eq. 1 (rendered maps) against the takeo photo: the loss falls and
    the regressed points move (NME between clean and adversarial landmarks)."""
    from lbcore.engine import AttackConfig, attack

    name, img, gt = faces68[3]
    assert name == "takeo.ppm"
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    faces = Faces.from_lists([[box_from_landmarks(gt)]])
    res = attack(x, faces, ext, AttackConfig(steps=4, random_start=1.0))
    assert float((res.adversarial - x).abs().max()) <= 15.0
    assert float(res.final_loss[0]) < float(res.clean_loss[0]) - 1.0
    clean = ext.predict(x, faces)[0].numpy()
    adv = ext.predict(res.adversarial, faces)[0].numpy()
    assert float(nme(adv, clean)) > 0.05
