"""Golden values for SAN's decoding: peak, 7x7 soft-argmax, epsilon flooring, image mapping."""

from __future__ import annotations

import pytest
import torch

from lb_avssan.extractor import MACHINE_EPS, AVSSANExtractor, san_crop_boxes, san_peak_soft_argmax
from lbcore import ExtractorOutput, Faces


def _maps(h: int = 16, w: int = 16, k: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.zeros(1, k, h, w, dtype=dtype)


def test_machine_eps_is_float64_epsilon():
    assert MACHINE_EPS == 2.220446049250313e-16


def test_isolated_peak_decodes_to_its_pixel():
    hm = _maps()
    hm[0, 0, 9, 5] = 1.0
    coords, score = san_peak_soft_argmax(hm)
    assert coords[0, 0].tolist() == [5.0, 9.0]
    assert score[0, 0].item() == 1.0


def test_argmax_row_is_index_floor_div_width_on_non_square_maps():
    hm = _maps(5, 7)
    hm[0, 0, 3, 6] = 2.0
    coords, _ = san_peak_soft_argmax(hm)
    assert coords[0, 0].tolist() == [6.0, 3.0]


def test_soft_argmax_over_the_window():
    hm = _maps()
    hm[0, 0, 9, 5] = 1.0
    hm[0, 0, 9, 6] = 0.5  # right neighbour
    hm[0, 0, 8, 5] = 0.25  # upper neighbour
    hm[0, 0, 9, 9] = 0.75  # 4 columns right: outside the 7x7 window, ignored
    coords, _ = san_peak_soft_argmax(hm)
    total = 1.75 + 46 * MACHINE_EPS
    assert coords[0, 0, 0].item() == pytest.approx(5 + 0.5 / total, abs=1e-12)
    assert coords[0, 0, 1].item() == pytest.approx(9 - 0.25 / total, abs=1e-12)


def test_radius_sets_the_window():
    hm = _maps()
    hm[0, 0, 9, 5] = 1.0
    hm[0, 0, 9, 8] = 0.5  # 3 columns right: inside r=3, outside r=2
    (x3,) = san_peak_soft_argmax(hm, radius=3)[0][0, :, 0].tolist()
    (x2,) = san_peak_soft_argmax(hm, radius=2)[0][0, :, 0].tolist()
    assert x3 == pytest.approx(5 + 1.5 / 1.5, abs=1e-12)
    assert x2 == pytest.approx(5.0, abs=1e-12)


def test_values_at_or_below_threshold_are_floored_to_eps():
    hm = _maps()
    hm[0, 0, 2, 2] = 1.0
    hm[0, 0, 2, 3] = 2e-6  # above the 1e-6 threshold: kept
    hm[0, 0, 2, 1] = -5.0  # negative: floored, must not push the estimate right
    hm[0, 0, 3, 2] = 1e-6  # exactly the threshold: floored
    coords, _ = san_peak_soft_argmax(hm)
    total = 1.0 + 2e-6 + 47 * MACHINE_EPS
    assert coords[0, 0, 0].item() == pytest.approx(2 + 2e-6 / total, abs=1e-15)
    assert coords[0, 0, 1].item() == pytest.approx(2.0, abs=1e-14)


def test_window_at_the_border_counts_outside_as_eps():
    # every value is below the threshold: all 49 window cells, including the 33 outside the
    # map, weigh eps, so the estimate stays on the peak. Clipping the window to the map (or
    # not flooring) would pull it towards the interior.
    hm = torch.full((1, 1, 16, 16), 5e-7, dtype=torch.float64)
    hm[0, 0, 0, 0] = 9e-7
    coords, _ = san_peak_soft_argmax(hm)
    assert coords[0, 0].tolist() == [0.0, 0.0]
    # a strong neighbour at the corner still counts normally
    hm = _maps()
    hm[0, 0, 15, 15] = 1.0
    hm[0, 0, 15, 14] = 1.0 / 3
    coords, _ = san_peak_soft_argmax(hm)
    total = 4 / 3 + 47 * MACHINE_EPS
    assert coords[0, 0, 0].item() == pytest.approx(15 - (1 / 3) / total, abs=1e-12)
    assert coords[0, 0, 1].item() == pytest.approx(15.0, abs=1e-12)


def test_float32_maps_decode_like_float64():
    hm = torch.randn(2, 98, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c64, _ = san_peak_soft_argmax(hm)
    c32, _ = san_peak_soft_argmax(hm.float())
    assert torch.allclose(c32.double(), c64, atol=1e-5)


def test_crop_boxes_grow_clip_and_truncate():
    boxes = torch.tensor(
        [
            [30.0, 20.0, 70.0, 60.0],  # inside the image
            [10.0, 40.0, 50.0, 100.0],  # grows past the bottom: clipped to H
            [-10.0, -5.0, 30.0, 45.0],  # partly outside top-left
            [10.3, 20.6, 50.1, 70.2],  # fractional
        ]
    )
    crop = san_crop_boxes(boxes, (100, 120))
    assert torch.allclose(crop[0], torch.tensor([22.0, 12.0, 78.0, 68.0]))
    assert torch.allclose(crop[1], torch.tensor([2.0, 28.0, 58.0, 100.0]))
    assert torch.allclose(crop[2], torch.tensor([0.0, 0.0, 38.0, 55.0]))
    assert torch.allclose(crop[3], torch.tensor([2.34, 10.68, 58.06, 80.12]), atol=1e-4)
    trunc = san_crop_boxes(boxes, (100, 120), truncate=True)
    assert trunc[3].tolist() == [2.0, 10.0, 59.0, 81.0]
    assert torch.equal(trunc[:3], crop[:3])
    # a face entirely outside keeps a one-pixel crop instead of an empty one
    out = san_crop_boxes(torch.tensor([[200.0, 200.0, 240.0, 240.0]]), (100, 120))
    assert (out[0, 2] - out[0, 0]).item() >= 1.0 and (out[0, 3] - out[0, 1]).item() >= 1.0


@pytest.mark.parametrize("truncate", [False, True])
def test_image_coordinates_through_the_crop(truncate):
    """Golden: hm (x, y) -> crop (8x + 3.5, 8y + 3.5) -> image (x_c * cw / 128 + x1, ...)."""
    ext = AVSSANExtractor(width_div=8, truncate=truncate).eval()
    images = torch.zeros(2, 3, 100, 120)
    boxes = torch.tensor([[10.0, 40.0, 50.0, 100.0], [-10.0, -5.0, 30.0, 45.0], [10.3, 20.6, 50.1, 70.2]])
    faces = Faces(boxes, torch.tensor([0, 1, 1]))
    with torch.no_grad():
        out = ext(images, faces)
    hm = torch.zeros(3, 98, 16, 16)
    peaks = [(5, 9), (0, 15), (12, 3)]
    for i, (x, y) in enumerate(peaks):
        hm[i, :, y, x] = 1.0
    landmarks = ext.decode(ExtractorOutput(heatmaps=hm, hm_to_image=out.hm_to_image))
    crops = [(2.0, 28.0, 58.0, 100.0), (0.0, 0.0, 38.0, 55.0)]
    crops.append((2.0, 10.0, 59.0, 81.0) if truncate else (2.34, 10.68, 58.06, 80.12))
    for i, ((x, y), (x1, y1, x2, y2)) in enumerate(zip(peaks, crops, strict=True)):
        ex = (8 * x + 3.5) * (x2 - x1) / 128 + x1
        ey = (8 * y + 3.5) * (y2 - y1) / 128 + y1
        assert torch.allclose(landmarks[i], torch.tensor([ex, ey]).expand(98, 2), atol=1e-4), i
    assert torch.allclose(out.extra["crop_box"], torch.tensor(crops), atol=1e-4)


def test_decode_ignores_the_background_channel():
    ext = AVSSANExtractor(width_div=8, include_background=True)
    hm = torch.zeros(1, 99, 16, 16)
    hm[0, :98, 4, 4] = 1.0
    hm[0, 98, 10, 10] = 5.0
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    lm = ext.decode(ExtractorOutput(heatmaps=hm, hm_to_image=theta))
    assert lm.shape == (1, 98, 2)
    assert torch.allclose(lm, torch.full((1, 98, 2), 4.0))
