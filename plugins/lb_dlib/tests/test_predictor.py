"""dlib68: the same landmarks as dlib, counted queries, both backwards, the attack engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lbcore.errors import SpecError, WeightsError
from lbcore.types import Faces


def _dlib_points(ext, rgb: np.ndarray, box: list[float]) -> np.ndarray:
    import dlib

    shape = ext.predictor(rgb, dlib.rectangle(*(int(v) for v in box)))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def test_landmarks_equal_dlibs_own(dlib_ext, astronaut) -> None:
    rgb, x, box = astronaut
    ref = _dlib_points(dlib_ext, rgb, box)
    # two images in one batch (the second shifted), one face each: batch order and offsets kept
    shifted = torch.roll(x, shifts=(7, 11), dims=(2, 3))
    faces = Faces.from_lists([[box], [[box[0] + 11, box[1] + 7, box[2] + 11, box[3] + 7]]])
    lm = dlib_ext.predict(torch.cat([x, shifted]), faces)
    assert lm.shape == (2, 68, 2)
    np.testing.assert_array_equal(lm[0].numpy(), ref)
    np.testing.assert_array_equal(lm[1].numpy(), ref + np.array([11, 7], np.float32))


def test_rendered_heatmaps_peak_at_the_landmarks(dlib_ext, astronaut) -> None:
    from lbcore.extractor import apply_affine, argmax_2d

    _, x, box = astronaut
    out = dlib_ext(x, Faces.from_lists([[box]]))
    assert out.heatmaps is not None and out.heatmaps.shape == (1, 68, 64, 64)
    peaks = apply_affine(out.hm_to_image, argmax_2d(out.heatmaps))
    cell = float(out.hm_to_image[0, 0, 0])  # image pixels per heat-map pixel
    assert float((peaks - out.landmarks).abs().max()) <= cell


def test_queries_are_counted(dlib_ext, astronaut) -> None:
    _, x, box = astronaut
    faces = Faces.from_lists([[box, box]])
    dlib_ext.grad, dlib_ext.samples = "nes", 8
    dlib_ext.reset_queries()
    xi = x.clone().requires_grad_(True)
    lm = dlib_ext(xi, faces).landmarks
    assert dlib_ext.queries == {"forward": 2, "backward": 0}
    g = torch.zeros_like(lm)
    g[0] = 1.0  # only the first face has a cotangent: the second costs no queries
    (grad,) = torch.autograd.grad(lm, xi, g)
    assert dlib_ext.queries == {"forward": 2, "backward": 8}
    assert dlib_ext.total_queries == 10
    assert bool(grad.abs().sum() > 0)
    # nothing outside the face's region square
    x1, y1, x2, y2 = dlib_ext.region_of(torch.tensor(box), x.shape[2], x.shape[3])
    inside = torch.zeros_like(grad, dtype=torch.bool)
    inside[..., y1:y2, x1:x2] = True
    assert not bool(grad[~inside].any())


def test_bad_model_file_is_one_clear_line(tmp_path: Path, dlib_ext) -> None:
    from lb_dlib.predictor import DlibShapePredictor

    bad = tmp_path / "model.dat"
    bad.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="model.dat") as err:
        DlibShapePredictor(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="no such"):
        DlibShapePredictor(tmp_path / "missing.dat")


def test_registered_and_in_the_default_ensemble_at_high_only(dlib_ext) -> None:
    from lbcore.apps.protection import default_extractor_specs
    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    comp = pm.components("extractors")["dlib68"]
    assert comp.metadata.get("default") == ("high",) and comp.metadata.get("measure") is True
    ext = pm.build("extractors", "dlib68:samples=4,sigma=3,grad=surrogate,blur=2")
    assert (ext.samples, ext.sigma, ext.grad, ext.blur) == (4, 3.0, "surrogate", 2.0)
    assert "dlib68" not in default_extractor_specs(pm)[0]
    assert "dlib68" not in default_extractor_specs(pm, "paper")[0]
    member = default_extractor_specs(pm, "high")[0]["dlib68"]
    assert isinstance(member, type(dlib_ext)) and member.blur == 1.5  # default_spec: dlib68:blur=1.5


def test_conforms_to_the_extractor_contract(dlib_ext) -> None:
    from lbcore.testing import check_component

    dlib_ext.grad, dlib_ext.samples = "nes", 8
    check_component("extractor", dlib_ext)


@pytest.fixture(scope="module")
def cascade(dlib_ext):
    """The decoded trees (the first run decodes the 100 MB model, ~1 min, then it is cached)."""
    return dlib_ext.cascade


def test_tree_cascade_reproduces_dlib(dlib_ext, cascade, astronaut) -> None:
    rgb, x, box = astronaut
    ref = _dlib_points(dlib_ext, rgb, box)
    hard, soft = cascade.run(x[0], tuple(int(v) for v in box), temperature=0.0)
    np.testing.assert_allclose(hard.numpy(), ref, atol=1.0)
    assert float((hard - torch.from_numpy(ref)).abs().mean()) < 0.1
    # the soft surrogate stays near dlib's result
    _, soft = cascade.run(x[0], tuple(int(v) for v in box), temperature=8.0)
    assert float((soft - torch.from_numpy(ref)).norm(dim=1).mean()) < 5.0


def _noise_loss(ext, x, faces, eps: float) -> float:
    from lbcore.losses import HeatmapCosineLoss

    g = torch.Generator().manual_seed(0)
    noisy = (x + (torch.randint(0, 2, x.shape, generator=g) * 2 - 1) * eps).clamp(0, 255)
    with torch.no_grad():
        return float(HeatmapCosineLoss()(ext(x, faces), ext(noisy, faces)).sum())


def test_surrogate_attack_lowers_eq1_more_than_noise(dlib_ext, cascade, astronaut) -> None:
    from lbcore.engine import attack, preset

    _, x, box = astronaut
    faces = Faces.from_lists([[box]])
    dlib_ext.grad = "surrogate"
    dlib_ext.reset_queries()
    res = attack(x, faces, dlib_ext, preset("lb", steps=8, random_start=2.0))
    assert float(res.clean_loss) == pytest.approx(68.0, abs=1e-3)
    assert float(res.final_loss) < _noise_loss(dlib_ext, x, faces, 15.0) - 0.5
    assert float(res.linf) <= 15.0
    assert dlib_ext.queries["backward"] == 0  # white box: only the forward runs query dlib


def test_nes_estimate_points_like_dlibs_own_trees(dlib_ext, cascade, astronaut) -> None:
    """On the real predictor the query estimate (of the Gaussian-smoothed gradient) and the soft
    trees' gradient agree far beyond chance: cosine ~0.03 measured with 200 queries, where a
    random direction in the region gives ~0 +- 1/sqrt(d) (d = the region's values, ~55,000 here)."""
    import torch.nn.functional as F

    _, x, box = astronaut
    faces = Faces.from_lists([[box]])
    g = torch.randn((1, 68, 2), generator=torch.Generator().manual_seed(0))
    dlib_ext.samples, dlib_ext.tile = 200, 2
    dlib_ext.generator.manual_seed(0)
    nes = dlib_ext.estimate_vjp(x, faces, g)
    sur = dlib_ext.surrogate_vjp(x, faces, g)
    d = int((nes != 0).sum())  # the estimate's support: the face's region square, three channels
    cos = float(F.cosine_similarity(nes.flatten(), sur.flatten(), dim=0))
    assert cos > 4.0 / d ** 0.5


def test_blur_smooths_the_surrogate_gradient(dlib_ext, cascade, astronaut) -> None:
    """``blur=s``: the surrogate's gradient is the raw one smoothed by a Gaussian of ``s`` pixels and
    rescaled to the raw one's norm (checked against OpenCV's blur of the raw gradient), off by
    default; bad values refused."""
    import cv2

    from lb_dlib.predictor import DlibShapePredictor

    _, x, box = astronaut
    faces = Faces.from_lists([[box]])
    g = torch.randn((1, 68, 2), generator=torch.Generator().manual_seed(0))
    dlib_ext.grad = "surrogate"
    assert dlib_ext.blur == 0.0
    raw = dlib_ext.surrogate_vjp(x, faces, g)[0]
    dlib_ext.blur = 2.0
    try:
        smooth = dlib_ext.surrogate_vjp(x, faces, g)[0]
    finally:
        dlib_ext.blur = 0.0
    want = np.stack([cv2.GaussianBlur(c.numpy(), (13, 13), 2.0, borderType=cv2.BORDER_CONSTANT) for c in raw])
    want *= float(raw.norm()) / np.linalg.norm(want)  # at the raw gradient's norm (its weight in an ensemble)
    np.testing.assert_allclose(smooth.numpy(), want, atol=1e-4 * float(np.abs(want).max()))
    assert float(smooth.norm()) == pytest.approx(float(raw.norm()), rel=1e-4)
    # dlib reads single pixels: the raw gradient is speckle (neighbours nearly uncorrelated), the
    # smoothed one varies slowly (measured 0.11 and 0.97)

    def neighbour_correlation(t: torch.Tensor) -> float:
        return float((t[:, :, 1:] * t[:, :, :-1]).sum() / (t * t).sum())

    assert neighbour_correlation(raw) < 0.3 < 0.9 < neighbour_correlation(smooth)
    with pytest.raises(SpecError, match="blur"):
        DlibShapePredictor(blur=-1)
