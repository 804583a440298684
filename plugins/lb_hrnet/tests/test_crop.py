"""The crop rule against a direct numpy/PIL re-implementation of the original ``crop()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lb_hrnet.plugin import hrnet
from lbcore.extractor import affine_crop, compose_affine, scale_affine


def _corner(pt: list[float], center: np.ndarray, scale: float, out: int) -> np.ndarray:
    """``transform_pixel(pt, center, scale, [out, out], invert=1)``: 1-based, ``int() + 1``."""
    side = 200.0 * scale
    t = np.array([[out / side, 0, out * (-center[0] / side + 0.5)],
                  [0, out / side, out * (-center[1] / side + 0.5)], [0, 0, 1.0]])
    q = np.linalg.inv(t) @ np.array([pt[0] - 1.0, pt[1] - 1.0, 1.0])
    return q[:2].astype(int) + 1


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    # scipy.misc.imresize resized with PIL's bilinear filter; float planes keep it exact.
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize((w, h), Image.BILINEAR))
                     for c in range(img.shape[2])], axis=-1)


def reference_crop(img: np.ndarray, center: np.ndarray, scale: float, out: int = 256) -> np.ndarray:
    """The original test-time ``crop()`` (no rotation): optional pre-shrink, integer corners,
    zero-padded copy, resize to ``out`` x ``out``. ``img`` is ``(H, W, 3)`` float32."""
    ht, wd = img.shape[:2]
    sf = scale * 200.0 / out
    if sf >= 2:
        img = _resize(img, int(np.floor(wd / sf)), int(np.floor(ht / sf)))
        center, scale = center / sf, scale / sf
    ul = _corner([0, 0], center, scale, out)
    br = _corner([out, out], center, scale, out)
    canvas = np.zeros((br[1] - ul[1], br[0] - ul[0], img.shape[2]), np.float32)
    nx = max(0, -ul[0]), min(br[0], img.shape[1]) - ul[0]
    ny = max(0, -ul[1]), min(br[1], img.shape[0]) - ul[1]
    ox = max(0, ul[0]), min(img.shape[1], br[0])
    oy = max(0, ul[1]), min(img.shape[0], br[1])
    canvas[ny[0]:ny[1], nx[0]:nx[1]] = img[oy[0]:oy[1], ox[0]:ox[1]]
    return _resize(canvas, out, out)


BOXES = {
    "small, upsampled": [50.0, 60.0, 150.0, 170.0],
    "partly outside": [10.3, -20.7, 90.1, 70.2],
    "beyond the right edge": [850.0, 600.0, 960.0, 720.0],
    "about 1:1": [400.25, 300.0, 605.0, 504.5],
    "large, pre-shrunk": [300.0, 200.0, 800.0, 650.0],
}


@pytest.mark.parametrize("name", list(BOXES))
def test_crop_matches_the_original(name, smooth_images):
    ext = hrnet(weights="none", width=6)
    box = torch.tensor([BOXES[name]])
    image = smooth_images[:1]
    theta = ext.crop_theta(box, image_size=(700, 900))
    got = affine_crop(image, torch.zeros(1, dtype=torch.long), theta, (256, 256))[0].permute(1, 2, 0).numpy()
    center, scale = ext.center_scale(box)
    ref = reference_crop(image[0].permute(1, 2, 0).numpy().copy(), center[0].numpy(), float(scale[0]))
    diff = np.abs(got - ref)
    side = 1.25 * max(box[0, 2] - box[0, 0], box[0, 3] - box[0, 1]).item()
    if side <= 256:
        # Upsampling: PIL's bilinear is plain bilinear - the same samples, up to rounding.
        assert diff[4:-4, 4:-4].max() < 0.05
    else:
        # Shrinking: PIL low-passes (it widens its filter) where affine_crop does not; a
        # misplacement by one pixel would give a mean error near 5 on this image.
        assert diff.mean() < 0.5
    assert np.percentile(diff, 99) < 2.0


def test_crop_without_image_size_approximates_the_shrink():
    ext = hrnet(weights="none", width=6)
    box = torch.tensor([BOXES["large, pre-shrunk"]])
    exact = ext.crop_theta(box, image_size=(700, 900))
    approx = ext.crop_theta(box)
    uv = torch.tensor([[0.0, 0.0], [255.0, 255.0]])
    p_exact = uv @ exact[0, :, :2].T + exact[0, :, 2]
    p_approx = uv @ approx[0, :, :2].T + approx[0, :, 2]
    assert (p_exact - p_approx).abs().max() < 2.0
    assert not torch.equal(exact, approx)


@pytest.mark.parametrize("name", list(BOXES))
def test_heatmap_to_image_agrees_with_the_crop(name):
    """The original decodes with the continuous transform while its crop rounds the corners:
    the two heat-map->image maps differ by about one image pixel at most, a fraction of a
    heat-map pixel for faces of usual size."""
    ext = hrnet(weights="none", width=6)
    box = torch.tensor([BOXES[name]])
    theta = ext.crop_theta(box, image_size=(700, 900))
    through_crop = compose_affine(theta, scale_affine(4.0, 4.0, 1))
    center, scale = ext.center_scale(box)
    decoding = ext.decode_theta(center, scale, (64, 64)).float()
    grid = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), -1).reshape(-1, 2)
    a = grid @ through_crop[0, :, :2].T + through_crop[0, :, 2]
    b = grid @ decoding[0, :, :2].T + decoding[0, :, 2]
    err = (a - b).abs().max().item()
    hm_pixel = float(200 * scale[0] / 64)
    assert err < 1.25
    assert err < 0.65 * hm_pixel
