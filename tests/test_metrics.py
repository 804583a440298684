"""Metrics: NME, failure rate, SSIM / mask-SSIM, PSNR and masks, against hand-computed cases
and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from lbcore.errors import InputError, SpecError
from lbcore.metrics import (
    face_mask,
    failure_rate,
    hull_mask,
    mask_ssim,
    nme,
    nme_mean,
    psnr,
    ssim,
    ssim_map,
)
from lbcore.schemes import IBUG68, WFLW98, WFLW98_TO_IBUG68


def _skimage_ssim(a, b):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=-1 if a.ndim == 3 else None,
    )


@pytest.fixture(scope="module")
def pair():
    """A textured colour image and a noisy copy (uint8)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:48, 0:64]
    base = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1) + rng.normal(0, 20, (48, 64, 3))
    a = np.clip(base, 0, 255).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 15, a.shape), 0, 255).astype(np.uint8)
    return a, b


# --------------------------------------------------------------------------- NME


def test_nme_hand_computed_68():
    gt = np.zeros((68, 2))
    gt[36] = (0.0, 0.0)
    gt[45] = (10.0, 0.0)  # interocular (outer corners) distance 10
    pred = gt.copy()
    pred[0] += (3.0, 4.0)  # one point off by 5
    pred[1] += (0.0, 6.8)  # another off by 6.8
    expected = (5.0 + 6.8) / 68 / 10
    assert nme(pred, gt) == pytest.approx(expected, rel=1e-12)
    assert nme(pred, gt, IBUG68) == pytest.approx(expected, rel=1e-12)
    assert nme(pred, gt, (36, 45)) == pytest.approx(expected, rel=1e-12)
    assert nme(pred, gt, np.array([36, 45])) == pytest.approx(expected, rel=1e-12)
    # other corners: distance between points 0 and 45 of gt
    assert nme(pred, gt, (0, 45)) == pytest.approx(expected, rel=1e-12)
    gt[0] = (10.0, 20.0)
    assert nme(gt, gt) == 0.0


def test_nme_batch_and_98_points():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (3, 98, 2))
    gt[:, 60] = (20.0, 50.0)
    gt[:, 72] = (60.0, 50.0)  # distance 40
    pred = gt + np.array([0.0, 2.0])  # every point off by 2
    out = nme(pred, gt)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, 2.0 / 40.0)
    assert nme(pred[0], gt[0], "wflw98") == pytest.approx(0.05)


def test_nme_98_against_68():
    """A 98-point prediction against 68-point ground truth compares the 68 mapped points and
    normalises by the 68 scheme's corners (which are 98's 60/72)."""
    rng = np.random.default_rng(2)
    pred98 = rng.uniform(0, 100, (98, 2))
    gt68 = pred98[list(WFLW98_TO_IBUG68)].copy()
    assert nme(pred98, gt68) == 0.0
    gt68[10] += (0.0, 3.0)
    interocular = np.linalg.norm(gt68[36] - gt68[45])
    expected = 3.0 / 68 / interocular
    assert nme(pred98, gt68) == pytest.approx(expected)
    assert nme(gt68, pred98) == pytest.approx(
        np.linalg.norm(pred98[list(WFLW98_TO_IBUG68)] - gt68, axis=1).mean()
        / np.linalg.norm(pred98[60] - pred98[72])
    )
    # naming the 98 scheme still works: its corners become the 68 scheme's
    assert nme(pred98, gt68, WFLW98) == pytest.approx(expected)


def test_nme_torch_input():
    torch = pytest.importorskip("torch")
    gt = np.zeros((68, 2))
    gt[45] = (8.0, 0.0)
    pred = gt + np.array([0.0, 4.0])
    assert nme(torch.tensor(pred), torch.tensor(gt)) == pytest.approx(0.5)


def test_nme_errors():
    gt = np.zeros((68, 2))
    with pytest.raises(InputError, match="coinciding eye corners"):
        nme(gt, gt)
    with pytest.raises(SpecError, match="cannot compare 5-point"):
        nme(np.zeros((5, 2)), gt)
    with pytest.raises(SpecError, match="no known eye corners for 5"):
        nme(np.zeros((5, 2)), np.ones((5, 2)))
    with pytest.raises(SpecError, match="scheme ibug68 has 68 points"):
        nme(np.zeros((98, 2)), np.ones((98, 2)), IBUG68)
    with pytest.raises(InputError, match="does not match"):
        nme(np.zeros((2, 68, 2)), np.ones((3, 68, 2)))
    with pytest.raises(SpecError, match="eye corners"):
        nme(gt, gt, (1, 99))


def test_nme_mean_and_failure_rate():
    nmes = np.array([0.02, 0.07, 0.08, 0.09, 0.12, np.nan])
    assert failure_rate(nmes[:5], 0.08) == pytest.approx(2 / 5)  # 0.08 itself is no failure
    assert failure_rate(nmes[:5], 0.10) == pytest.approx(1 / 5)
    assert failure_rate(nmes, 0.10) == pytest.approx(2 / 6)  # NaN counts as a failure
    assert nme_mean(nmes[:5]) == pytest.approx(0.076)
    assert math.isnan(nme_mean(nmes))
    assert math.isnan(nme_mean([])) and math.isnan(failure_rate([], 0.1))


# --------------------------------------------------------------------------- SSIM


def test_ssim_matches_skimage_colour_and_grey(pair):
    a, b = pair
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-9)
    g1, g2 = a[:, :, 1], b[:, :, 1]
    assert ssim(g1, g2) == pytest.approx(_skimage_ssim(g1, g2), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.95


def test_ssim_map_is_local(pair):
    """Changing one corner leaves the SSIM map far away untouched."""
    a, _ = pair
    b = a.copy()
    b[:8, :8] = 0
    s = ssim_map(a, b)
    assert s.shape == a.shape
    assert s[:8, :8].mean() < 0.5
    np.testing.assert_allclose(s[20:, 20:], 1.0)


def test_mask_ssim_variants_hand_checked(pair):
    a, b = pair
    box = (10, 8, 40, 30)
    m = face_mask(a.shape, box)[:, :, None]
    masked = _skimage_ssim((a * m).astype(np.float64), (b * m).astype(np.float64))
    assert mask_ssim(a, b, box) == pytest.approx(masked, abs=1e-9)
    assert mask_ssim(a, b, m[:, :, 0], variant="masked-image") == pytest.approx(masked, abs=1e-9)
    # mask-mean: the full-image map averaged over the box's pixels
    _, full_map = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=-1, full=True,
    )
    expected = full_map[8:30, 10:40].mean()
    assert mask_ssim(a, b, box, variant="mask-mean") == pytest.approx(expected, abs=1e-9)
    # the zeros outside the mask inflate the masked-image variant
    assert mask_ssim(a, b, box) > mask_ssim(a, b, box, variant="mask-mean")
    # a whole-image mask gives the whole-image SSIM in both variants
    whole = (0, 0, a.shape[1], a.shape[0])
    assert mask_ssim(a, b, whole, "mask-mean") == pytest.approx(ssim(a, b), abs=1e-12)
    assert mask_ssim(a, b, whole) == pytest.approx(ssim(a, b), abs=1e-12)


def test_mask_ssim_ignores_changes_outside_the_mask(pair):
    a, b = pair
    box = (10, 8, 40, 30)
    c = b.copy()
    c[40:, :] = 255 - c[40:, :]  # far below the box (more than the window's 5 px)
    assert mask_ssim(a, c, box) == pytest.approx(mask_ssim(a, b, box), abs=1e-12)
    assert mask_ssim(a, c, box, "mask-mean") == pytest.approx(
        mask_ssim(a, b, box, "mask-mean"), abs=1e-12
    )


def test_mask_ssim_torch_chw(pair):
    torch = pytest.importorskip("torch")
    a, b = pair
    ta = torch.from_numpy(a).permute(2, 0, 1).float()
    tb = torch.from_numpy(b).permute(2, 0, 1).float()[None]
    box = torch.tensor([10.0, 8.0, 40.0, 30.0])
    assert mask_ssim(ta, tb, box) == pytest.approx(mask_ssim(a, b, (10, 8, 40, 30)), abs=1e-9)


def test_ssim_errors(pair):
    a, b = pair
    with pytest.raises(InputError, match="shapes differ"):
        ssim(a, b[:-1])
    with pytest.raises(InputError, match="smaller than the 11x11"):
        ssim(a[:8, :8], b[:8, :8])
    with pytest.raises(SpecError, match="unknown variant"):
        mask_ssim(a, b, (0, 0, 20, 20), variant="luma")
    with pytest.raises(InputError, match="no pixel at least 5 px inside"):
        mask_ssim(a, b, (0, 0, 4, 4), variant="mask-mean")
    with pytest.raises(InputError, match="mask shape"):
        mask_ssim(a, b, np.ones((5, 5), bool))


# --------------------------------------------------------------------------- PSNR


def test_psnr_hand_computed():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 48  # MSE = 48^2 / 48 = 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 48))
    assert psnr(a, a) == math.inf
    # only the top-left 2x2: MSE = 48^2 / 12 = 192
    assert psnr(a, b, mask=(0, 0, 2, 2)) == pytest.approx(10 * math.log10(255**2 / 192))
    assert psnr(a, b, mask=(2, 2, 4, 4)) == math.inf
    with pytest.raises(InputError, match="selects no pixel"):
        psnr(a, b, mask=(10, 10, 12, 12))


# --------------------------------------------------------------------------- masks


def test_face_mask_pixel_convention():
    m = face_mask((6, 8, 3), (1, 2, 4, 5))
    assert m.shape == (6, 8) and m.sum() == 9  # columns 1..3, rows 2..4
    assert m[2, 1] and m[4, 3] and not m[5, 3] and not m[2, 4]
    # fractional box: pixel centres in [0.5, 2.5) -> 1, 2
    assert np.flatnonzero(face_mask((3, 5), (0.5, 0, 2.5, 3))[0]).tolist() == [1, 2]
    assert face_mask((4, 4), (-10, -10, 100, 100)).all()
    assert not face_mask((4, 4), (5, 5, 9, 9)).any()


def test_hull_mask_square_and_triangle():
    square = np.array([[1, 1], [4, 1], [4, 3], [1, 3], [2, 2]], float)  # an inner point too
    m = hull_mask((6, 6), square)
    expected = np.zeros((6, 6), bool)
    expected[1:4, 1:5] = True  # boundary pixels included
    np.testing.assert_array_equal(m, expected)
    tri = np.array([[0, 0], [4, 0], [0, 4]], float)
    t = hull_mask((5, 5), tri)
    yy, xx = np.mgrid[0:5, 0:5]
    np.testing.assert_array_equal(t, xx + yy <= 4)
    # clockwise order gives the same mask
    np.testing.assert_array_equal(hull_mask((5, 5), tri[::-1]), t)
    # a segment: only the centres on it
    seg = hull_mask((5, 5), np.array([[1, 2], [3, 2]], float))
    assert np.argwhere(seg).tolist() == [[2, 1], [2, 2], [2, 3]]


def test_hull_mask_real_face_inside_box(shared):
    text = (shared / "data" / "faces68" / "lenna.pts").read_text().split("{")[1].split("}")[0]
    pts = np.array([float(v) for v in text.split()]).reshape(68, 2)
    m = hull_mask((512, 512, 3), pts)
    x0, y0 = np.ceil(pts.min(0)).astype(int)
    x1, y1 = np.floor(pts.max(0)).astype(int)
    assert m.any()
    assert not m[:y0].any() and not m[y1 + 1 :].any()
    assert not m[:, :x0].any() and not m[:, x1 + 1 :].any()
    # the hull covers most of its bounding box but not all (a face is roughly an ellipse)
    frac = m.sum() / ((x1 - x0 + 1) * (y1 - y0 + 1))
    assert 0.6 < frac < 0.95
    nose = np.round(pts[30]).astype(int)
    assert m[nose[1], nose[0]]


def test_ssim_on_a_real_face_with_a_budget_15_perturbation(shared):
    """Lenna with a random +-15 sign perturbation (the paper's budget) inside the face box:
    the whole-image SSIM agrees with skimage, and the perturbation shows in SSIM_I."""
    import cv2

    img = cv2.imread(str(shared / "data" / "faces68" / "lenna.png"))[:, :, ::-1]
    text = (shared / "data" / "faces68" / "lenna.pts").read_text().split("{")[1].split("}")[0]
    pts = np.array([float(v) for v in text.split()]).reshape(68, 2) - 1.0
    box = np.concatenate([pts.min(0), pts.max(0)])
    rng = np.random.default_rng(0)
    m = face_mask(img.shape, box)[:, :, None]
    adv = np.clip(img + 15.0 * rng.choice([-1.0, 1.0], img.shape) * m, 0, 255).astype(np.uint8)
    assert ssim(img, adv) == pytest.approx(_skimage_ssim(img, adv), abs=1e-9)
    masked = mask_ssim(img, adv, box)
    mean_in_mask = mask_ssim(img, adv, box, "mask-mean")
    assert 0.0 < mean_in_mask < masked < 1.0
    assert mean_in_mask < 0.6  # +-15 sign noise is very visible to SSIM on smooth skin
    assert mask_ssim(img, adv, hull_mask(img.shape, pts), "mask-mean") < 0.6
    assert 24 < psnr(img, adv, box) < 26  # 10 log10(255^2 / 15^2) = 24.6 dB; clipping only raises it


def test_edge_band_sees_a_hard_edge_and_not_a_faded_one():
    from lbcore.metrics import edge_band

    clean = np.full((64, 64, 3), 100.0)
    hard = clean.copy()
    hard[16:48, 16:48] += 6  # a square changed by 6 grey levels, edge included
    assert edge_band(clean, hard) == pytest.approx(6.0)
    yy, xx = np.mgrid[0:64, 0:64]
    fade = np.clip(1 - np.hypot(yy - 32, xx - 32) / 20, 0, None)  # 6 at the centre, 0 at radius 20
    soft = clean + 6 * fade[..., None]
    band = edge_band(clean, soft)
    assert band is not None and band < 1.0
    assert edge_band(clean, clean) is None
