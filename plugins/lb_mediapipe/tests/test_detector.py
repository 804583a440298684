"""The blazeface detector: anchors, weighted NMS, the contract, faces found on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from lb_mediapipe.detector import anchors, weighted_nms
from lbcore.io.annotations import box_from_landmarks
from lbcore.testing import check_component


@pytest.fixture(scope="module")
def det(blazeface_path):
    from lb_mediapipe.plugin import blazeface

    return blazeface(weights=str(blazeface_path))


def test_anchor_layout():
    a = anchors()
    assert a.shape == (896, 2)
    assert np.allclose(a[0], [0.5 / 16, 0.5 / 16]) and np.allclose(a[1], a[0])
    assert np.allclose(a[512], [0.5 / 8, 0.5 / 8]) and np.allclose(a[517], a[512])
    assert np.allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_weighted_nms_blends_overlaps_and_keeps_separate_boxes():
    dets = np.array([[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.3], [50, 50, 60, 60, 0.8]], dtype=np.float32)
    out = weighted_nms(dets, 0.3)
    assert len(out) == 2
    assert out[0, 4] == pytest.approx(0.9) and out[0, 0] == pytest.approx(0.3 / 1.2)
    assert np.allclose(out[1], dets[2])


def test_conformance_kit_passes(det):
    check_component("detector", det)


@pytest.mark.parametrize("tiles", [0, 1])
def test_finds_the_annotated_faces_it_should(blazeface_path, faces68, tiles):
    """faces68: on the whole image BlazeFace short range finds the three larger faces; Einstein's
    small face (about 85 px in a 817x1024 photo, 11 px after the 128-px resize) is beyond its
    range and is found by the half-size tiles (the default, tiles=1)."""
    from lb_mediapipe.plugin import blazeface

    det = blazeface(weights=str(blazeface_path), tiles=tiles)
    found = {}
    for name, img, gt in faces68:
        boxes = det(img)
        assert boxes.dtype == np.float32 and boxes.shape[1] == 5
        gx1, gy1, gx2, gy2 = box_from_landmarks(gt)
        hit = [b for b in boxes if gx1 < (b[0] + b[2]) / 2 < gx2 and gy1 < (b[1] + b[3]) / 2 < gy2]
        found[name] = bool(hit)
        if hit:  # the tight box sits on the markup's box
            b = hit[0]
            side = max(gx2 - gx1, gy2 - gy1)
            assert abs(b[1] - gy1) < 0.15 * side and abs(b[3] - gy2) < 0.15 * side, (name, b, (gx1, gy1, gx2, gy2))
    assert found == {"breakingbad.jpg": True, "einstein.jpg": tiles > 0, "lenna.png": True, "takeo.ppm": True}
