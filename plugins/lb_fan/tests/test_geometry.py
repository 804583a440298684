"""face-alignment's crop and decoding, pinned against direct re-statements of the original rules.

``reference_crop`` restates face-alignment's ``crop()`` with numpy/OpenCV (integer window
corners truncated toward zero, zero padding, ``cv2.resize`` bilinear); ``reference_decode``
restates ``get_preds_fromhm`` as the original's per-map loop. The extractor must reproduce both.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lb_fan.extractor import (
    decode_heatmaps,
    face_alignment_center_scale,
    face_alignment_crop_theta,
    face_alignment_decode_theta,
)
from lbcore.extractor import affine_crop, apply_affine, compose_affine, scale_affine

BOXES = [
    (150.0, 100.0, 250.0, 210.0),  # inside, centred
    (-30.0, -20.0, 60.0, 80.0),  # partly outside (top-left)
    (10.0, 50.0, 390.0, 290.0),  # large: the window is shrunk to 256
    (300.3, 200.7, 420.2, 330.9),  # fractional, mostly outside (bottom-right)
    (100.0, 100.0, 140.0, 145.0),  # small: the window is enlarged to 256
]


def reference_window(box: tuple[float, ...], res: int = 256) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    x1, y1, x2, y2 = box
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2 - 0.12 * (y2 - y1)])
    scale = ((x2 - x1) + (y2 - y1)) / 195.0
    side = 200.0 * scale
    # The original's inverse transform of the 1-based corners 1 and res, cast with .int().
    ul = np.trunc(1.0 * side / res + center - side / 2).astype(int)
    br = np.trunc(res * side / res + center - side / 2).astype(int)
    return ul, br, side, center


def reference_crop(image: np.ndarray, box: tuple[float, ...], res: int = 256) -> np.ndarray:
    ul, br, _, _ = reference_window(box, res)
    height, width = image.shape[:2]
    window = np.zeros((br[1] - ul[1], br[0] - ul[0], image.shape[2]), dtype=image.dtype)
    xs, xe = max(0, ul[0]), min(br[0], width)
    ys, ye = max(0, ul[1]), min(br[1], height)
    if xe > xs and ye > ys:
        window[ys - ul[1]: ye - ul[1], xs - ul[0]: xe - ul[0]] = image[ys:ye, xs:xe]
    return cv2.resize(window, (res, res), interpolation=cv2.INTER_LINEAR)


def reference_decode(hm: np.ndarray, box: tuple[float, ...], truncate: bool) -> np.ndarray:
    """The original per-map loop (1-based indices), then its inverse transform at resolution 64."""
    _, _, side, center = reference_window(box)
    k, h, w = hm.shape
    out = np.zeros((k, 2))
    for j in range(k):
        idx = int(np.argmax(hm[j].reshape(-1))) + 1
        px, py = (idx - 1) % w + 1, (idx - 1) // w + 1
        pred = np.array([px, py], dtype=np.float64)
        x, y = px - 1, py - 1
        if 0 < x < w - 1 and 0 < y < h - 1:
            diff = np.array([hm[j, y, x + 1] - hm[j, y, x - 1], hm[j, y + 1, x] - hm[j, y - 1, x]])
            pred += np.sign(diff) * 0.25
        pred -= 0.5
        img = pred * side / h + center - side / 2
        out[j] = np.trunc(img) if truncate else img
    return out


@pytest.fixture(scope="module")
def smooth_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (30, 40, 3)).astype(np.float32)
    return np.clip(cv2.resize(low, (400, 300), interpolation=cv2.INTER_CUBIC), 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("box", BOXES)
def test_crop_reproduces_face_alignment_pixels(smooth_image, box):
    ref = reference_crop(smooth_image, box).astype(np.float32)
    images = torch.from_numpy(smooth_image).permute(2, 0, 1)[None].float()
    theta = face_alignment_crop_theta(torch.tensor([box]))
    ours = affine_crop(images, torch.tensor([0]), theta, (256, 256))[0].permute(1, 2, 0).numpy()
    # OpenCV rounds to uint8 with fixed-point weights: <= 0.75 grey levels apart. The outer
    # 2-pixel ring differs by design: cv2.resize replicates its window's edge where we keep
    # sampling the image (or the zero padding) just outside it.
    inner = np.abs(ours - ref)[2:-2, 2:-2]
    assert inner.max() <= 1.0
    assert inner.mean() <= 0.3


@pytest.mark.parametrize("box", BOXES)
def test_crop_geometry_matches_reference_within_hundredths_of_a_pixel(box):
    """Crop a float image whose channels are the pixel's own x and y: the reference crop then
    reads out, for every crop pixel, the image position it sampled."""
    height, width = 300, 400
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.stack([xs, ys, np.ones_like(xs)], axis=-1)
    ref = reference_crop(ramp, box)
    theta = face_alignment_crop_theta(torch.tensor([box]))
    v, u = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    ours = apply_affine(theta, torch.stack([u, v], -1).reshape(1, -1, 2))[0].reshape(256, 256, 2).numpy()
    # Compare where the reference sampled real image pixels only (its third channel is 1 there
    # and its neighbours too), away from the replicated window edge.
    valid = np.zeros((256, 256), dtype=bool)
    valid[2:-2, 2:-2] = True
    valid &= cv2.erode((ref[..., 2] > 0.9999).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert valid.sum() > 500
    err = np.abs(ours - ref[..., :2])[valid]
    assert err.max() < 0.02


@pytest.mark.parametrize("box", BOXES)
def test_original_decode_map_is_within_its_documented_distance_of_the_crop_geometry(box):
    """hm_to_image (true geometry) and the original's decode map differ by the original's own
    1-based/0-based mix: at most h/256 + 1.5 image pixels (integer corners included)."""
    boxes = torch.tensor([box])
    hm_to_image = compose_affine(face_alignment_crop_theta(boxes), scale_affine(4.0, 4.0, 1))
    decode = face_alignment_decode_theta(boxes).float()
    grid = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), -1).reshape(1, -1, 2)
    gap = (apply_affine(hm_to_image, grid) - apply_affine(decode, grid)).abs().max().item()
    side = 200.0 * face_alignment_center_scale(boxes)[1].item()
    assert gap <= side / 256 + 1.5


def test_center_and_scale_follow_face_alignment():
    center, scale = face_alignment_center_scale(torch.tensor([[0.0, 0.0, 195.0, 195.0]]))
    torch.testing.assert_close(center, torch.tensor([[97.5, 97.5 - 0.12 * 195.0]], dtype=torch.float64))
    torch.testing.assert_close(scale, torch.tensor([2.0], dtype=torch.float64))


# -- decoding ---------------------------------------------------------------------------------

# Box (0, 0, 195, 195): centre (97.5, 74.1), side 400, heat-map step 6.25 image pixels, so the
# original maps a 0-based index i (+ shift d) to x = (i + 0.5 + d) * 6.25 - 102.5 and
# y = (j + 0.5 + d) * 6.25 - 125.9.
CORNER_BOX = (0.0, 0.0, 195.0, 195.0)
# Box (300, 40, 378, 118): centre (339, 69.64), side 160, step 2.5:
# x = (i + 0.5 + d) * 2.5 + 259, y = (j + 0.5 + d) * 2.5 - 10.36.
OFF_CENTRE_BOX = (300.0, 40.0, 378.0, 118.0)


def test_quarter_pixel_rule_both_directions_and_border_golden():
    hm = torch.zeros(1, 6, 64, 64)
    # 0: interior (10, 20), right and lower neighbours larger -> +0.25, +0.25
    hm[0, 0, 20, 10] = 1.0
    hm[0, 0, 20, 11] = 0.5
    hm[0, 0, 21, 10] = 0.5
    # 1: interior (40, 30), left and upper neighbours larger -> -0.25, -0.25
    hm[0, 1, 30, 40] = 1.0
    hm[0, 1, 30, 39] = 0.5
    hm[0, 1, 29, 40] = 0.5
    # 2: on the left border (0, 30), lower neighbour larger -> no shift at all (y neither)
    hm[0, 2, 30, 0] = 1.0
    hm[0, 2, 31, 0] = 0.5
    # 3: bottom-right corner -> no shift
    hm[0, 3, 63, 63] = 1.0
    hm[0, 3, 62, 62] = 0.5
    # 4: interior with equal neighbours -> sign(0) = 0, no shift
    hm[0, 4, 32, 32] = 1.0
    hm[0, 4, 32, 31] = hm[0, 4, 32, 33] = hm[0, 4, 31, 32] = hm[0, 4, 33, 32] = 0.5
    # 5: on the bottom border (5, 63), right neighbour larger -> no shift in x either
    hm[0, 5, 63, 5] = 1.0
    hm[0, 5, 63, 6] = 0.5
    theta = face_alignment_decode_theta(torch.tensor([CORNER_BOX]))
    got = decode_heatmaps(hm, theta)
    expected = torch.tensor(
        [
            [-35.3125, 3.7875],  # (10.75, 20.75)
            [149.0625, 63.1625],  # (40.25, 30.25)
            [-99.375, 64.725],  # (0.5, 30.5)
            [294.375, 270.975],  # (63.5, 63.5)
            [100.625, 77.225],  # (32.5, 32.5)
            [-68.125, 270.975],  # (5.5, 63.5)
        ]
    )
    torch.testing.assert_close(got[0], expected, atol=1e-4, rtol=0)
    truncated = decode_heatmaps(hm, theta, truncate=True)
    # Toward zero, like the original's astype(int32): -35.3 -> -35, not -36.
    torch.testing.assert_close(
        truncated[0],
        torch.tensor([[-35.0, 3.0], [149.0, 63.0], [-99.0, 64.0], [294.0, 270.0], [100.0, 77.0], [-68.0, 270.0]]),
    )


def test_off_centre_box_mapping_golden():
    hm = torch.zeros(1, 2, 64, 64)
    hm[0, 0, 20, 10] = 1.0
    hm[0, 0, 20, 11] = 0.5
    hm[0, 0, 21, 10] = 0.5
    hm[0, 1, 0, 63] = 1.0  # top-right corner of the map
    got = decode_heatmaps(hm, face_alignment_decode_theta(torch.tensor([OFF_CENTRE_BOX])))
    expected = torch.tensor([[10.75 * 2.5 + 259.0, 20.75 * 2.5 - 10.36], [63.5 * 2.5 + 259.0, 0.5 * 2.5 - 10.36]])
    torch.testing.assert_close(got[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("truncate", [False, True])
def test_decode_equals_original_loop_on_random_maps(truncate):
    g = torch.Generator().manual_seed(3)
    boxes = [CORNER_BOX, OFF_CENTRE_BOX, BOXES[1], BOXES[3]]
    hm = torch.randn(len(boxes), 7, 64, 64, generator=g)
    hm[:, 0, 0, 17] = 10.0  # force some border peaks
    hm[:, 1, 40, 63] = 10.0
    got = decode_heatmaps(hm, face_alignment_decode_theta(torch.tensor(boxes)), truncate=truncate)
    for f, box in enumerate(boxes):
        ref = reference_decode(hm[f].numpy(), box, truncate)
        np.testing.assert_allclose(got[f].numpy(), ref, atol=1e-4)
