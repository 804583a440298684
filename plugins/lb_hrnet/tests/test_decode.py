"""Golden tests of the decoding: the original ``decode_preds`` rules on synthetic heat-maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lb_hrnet.plugin import hrnet
from lbcore import ExtractorOutput, Faces


def reference_decode(hm: np.ndarray, center: np.ndarray, scale: np.ndarray, truncate: bool) -> np.ndarray:
    """``decode_preds`` re-written from its description: 1-based pixels, loops, numpy."""
    n, k, h, w = hm.shape
    out = np.zeros((n, k, 2))
    for i in range(n):
        side = 200.0 * scale[i]
        t = np.array([[w / side, 0, w * (-center[i, 0] / side + 0.5)],
                      [0, h / side, h * (-center[i, 1] / side + 0.5)], [0, 0, 1.0]])
        t_inv = np.linalg.inv(t)
        for p in range(k):
            m = hm[i, p]
            idx = int(np.argmax(m))
            x, y = float(idx % w + 1), float(idx // w + 1)
            if m.max() <= 0:
                x = y = 0.0
            px, py = int(math.floor(x)), int(math.floor(y))
            if 1 < px < w and 1 < py < h:
                x += np.sign(m[py - 1, px] - m[py - 1, px - 2]) * 0.25
                y += np.sign(m[py, px - 1] - m[py - 2, px - 1]) * 0.25
            x, y = x + 0.5, y + 0.5
            q = t_inv @ np.array([x - 1, y - 1, 1.0])
            out[i, p] = q[:2].astype(int) + 1 if truncate else q[:2]
    return out


@pytest.fixture
def run_on():
    """Decode given heat-maps through the full extractor path (crop, forward, decode)."""

    def run(heatmaps: torch.Tensor, boxes: list[list[float]], truncate: bool = False) -> tuple[torch.Tensor, ExtractorOutput]:
        ext = hrnet(weights="none", width=6, truncate=truncate)
        ext.forward_crops = lambda x: heatmaps.clone()  # the network is not under test here
        images = torch.zeros(1, 3, 120, 160)
        faces = Faces(torch.tensor(boxes), torch.zeros(len(boxes), dtype=torch.long))
        out = ext(images, faces)
        return ext.decode(out), out

    return run


def _peak(x: int, y: int, value: float = 1.0, k: int = 1) -> torch.Tensor:
    hm = torch.full((1, k, 64, 64), -0.1)
    hm[0, :, y, x] = value
    return hm


BOX = [30.5, 40.25, 130.5, 160.75]  # off-centre, taller than wide: side 120.5


def _to_image(px: float, py: float, box: list[float]) -> tuple[float, float]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * 1.25
    return (px + 0.5 - 32) * side / 64 + cx, (py + 0.5 - 32) * side / 64 + cy


def test_quarter_pixel_toward_larger_neighbour(run_on):
    hm = _peak(40, 20)
    hm[0, 0, 20, 41] = 0.5  # right > left
    hm[0, 0, 19, 40] = 0.3  # up > down
    hm2 = _peak(10, 50)
    hm2[0, 0, 50, 9] = 0.2  # left > right
    hm2[0, 0, 51, 10] = 0.2  # down > up
    ext = hrnet(weights="none", width=6)
    peaks = ext.heatmap_peaks(torch.cat([hm, hm2, _peak(33, 33)], dim=1))
    assert peaks[0].tolist() == [[40.25, 19.75], [9.75, 50.25], [33.0, 33.0]]
    lm, _ = run_on(hm, [BOX])
    assert lm[0, 0].tolist() == pytest.approx(_to_image(40.25, 19.75, BOX), abs=1e-4)


def test_border_peaks_are_not_shifted(run_on):
    maps = []
    for x, y in [(0, 10), (63, 10), (10, 0), (10, 63), (0, 0), (63, 63)]:
        hm = _peak(x, y)
        # unequal neighbours wherever they exist: the original still does not shift
        for dx, dy, v in [(1, 0, 0.5), (-1, 0, 0.2), (0, 1, 0.4), (0, -1, 0.1)]:
            if 0 <= x + dx < 64 and 0 <= y + dy < 64:
                hm[0, 0, y + dy, x + dx] = v
        maps.append(hm)
    ext = hrnet(weights="none", width=6)
    peaks = ext.heatmap_peaks(torch.cat(maps, dim=1))[0]
    assert peaks.tolist() == [[0, 10], [63, 10], [10, 0], [10, 63], [0, 0], [63, 63]]
    # one step inside the border the shift applies
    assert ext.heatmap_peaks(_peak(1, 62) + 0 * _peak(0, 0))[0, 0].tolist() == [1.0, 62.0]
    hm = _peak(1, 62)
    hm[0, 0, 62, 2] = 0.5
    hm[0, 0, 63, 1] = 0.5
    assert ext.heatmap_peaks(hm)[0, 0].tolist() == [1.25, 62.25]


def test_maps_without_positive_maximum_decode_to_the_origin(run_on):
    hm = torch.cat([torch.full((1, 1, 64, 64), -2.0), torch.zeros(1, 1, 64, 64), _peak(20, 30, value=1e-6)], dim=1)
    hm[0, 0, 5, 5] = -1.0  # the largest value, still negative
    lm, _ = run_on(hm, [BOX])
    # the original's 1-based (0, 0) is heat-map pixel (-1, -1) here, without the quarter shift
    assert lm[0, 0].tolist() == pytest.approx(_to_image(-1, -1, BOX), abs=1e-4)
    assert lm[0, 1].tolist() == pytest.approx(_to_image(-1, -1, BOX), abs=1e-4)
    assert lm[0, 2].tolist() == pytest.approx(_to_image(20, 30, BOX), abs=1e-4)


def test_image_coordinates_off_centre_and_partly_outside(run_on):
    outside = [-50.0, -30.0, 40.0, 70.0]  # partly left of and above the image
    hm = torch.full((2, 2, 64, 64), -0.1)
    hm[:, 0, 4, 3] = 1.0
    hm[:, 1, 58, 60] = 1.0
    lm, out = run_on(hm, [BOX, outside])
    for i, box in enumerate([BOX, outside]):
        assert lm[i, 0].tolist() == pytest.approx(_to_image(3, 4, box), abs=1e-4)
        assert lm[i, 1].tolist() == pytest.approx(_to_image(60, 58, box), abs=1e-4)
    # hand values: side 1.25 * 100 = 125, centre (-5, 20): x = (3.5 - 32) * 125 / 64 - 5
    assert lm[1, 0, 0].item() == pytest.approx(-60.6640625, abs=1e-5)
    assert lm[1, 0, 1].item() == pytest.approx((4.5 - 32) * 125 / 64 + 20, abs=1e-5)
    # hm_to_image is the same transform
    assert out.hm_to_image is not None
    expected = [125 / 64, 0, -5 + (0.5 - 32) * 125 / 64, 0, 125 / 64, 20 + (0.5 - 32) * 125 / 64]
    assert out.hm_to_image[1].flatten().tolist() == pytest.approx(expected, abs=1e-4)
    # truncate: int() toward zero then +1, as numpy's astype(int)
    lm_t, _ = run_on(hm, [BOX, outside], truncate=True)
    assert lm_t[1, 0].tolist() == [math.trunc(-60.6640625) + 1, math.trunc((4.5 - 32) * 125 / 64 + 20) + 1]
    assert lm_t[1, 0, 0].item() == -59.0


def test_matches_reference_decode_preds_on_random_maps(run_on):
    g = torch.Generator().manual_seed(3)
    hm = torch.randn(3, 98, 64, 64, generator=g)
    hm[1, 5] = -hm[1, 5].abs() - 0.01  # a map with no positive value
    hm[2, 7] = 0.0  # ties everywhere, maximum 0
    boxes = [BOX, [-50.0, -30.0, 40.0, 70.0], [12.25, 7.0, 300.0, 250.5]]
    b = np.array(boxes)
    center = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    scale = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 200 * 1.25
    lm_t, _ = run_on(hm, boxes, truncate=True)
    assert np.array_equal(lm_t.numpy(), reference_decode(hm.numpy(), center, scale, truncate=True))
    lm_f, out = run_on(hm, boxes)
    assert np.allclose(lm_f.numpy(), reference_decode(hm.numpy(), center, scale, truncate=False), atol=1e-4)
    # Without center/scale the float32 hm_to_image gives the same landmarks.
    ext = hrnet(weights="none", width=6)
    plain = ExtractorOutput(heatmaps=out.heatmaps, hm_to_image=out.hm_to_image)
    assert torch.allclose(ext.decode(plain), lm_f, atol=1e-3)
