"""The extractor contract: crop sampling, gradients, batching, registration, devices."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lb_avssan.extractor import AVSSANExtractor, crop_without_padding
from lb_avssan.model import ITNCPM
from lbcore import Faces
from lbcore.errors import SpecError, WeightsError
from lbcore.extractor import affine_crop
from lbcore.testing import check_extractor
from lbcore.weights import WeightsFile


@pytest.fixture(scope="module")
def small() -> AVSSANExtractor:
    torch.manual_seed(0)
    return AVSSANExtractor(ITNCPM(width_div=8)).eval()


def test_normalise_maps_0_255_to_minus_one_one(small):
    x = torch.tensor([0.0, 127.5, 255.0])
    assert small.normalise(x).tolist() == [-1.0, 0.0, 1.0]


def test_crop_samples_the_box_non_uniformly():
    """A ramp image shows where each crop pixel samples: x1 + (u + 0.5) * cw / 128 - 0.5."""
    ext = AVSSANExtractor(width_div=8)
    h, w = 120, 160
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    images = torch.stack([xs, ys, xs + ys])[None]
    boxes = torch.tensor([[40.0, 30.0, 120.0, 80.0]])  # 80 x 50: the crop is 112 x 70
    crop_boxes = ext.crop_boxes(boxes, (h, w))
    assert crop_boxes[0].tolist() == [24.0, 20.0, 136.0, 90.0]
    theta = ext.theta_from_crop_boxes(crop_boxes)
    crops = crop_without_padding(images, torch.tensor([0]), theta, (128, 128))
    u = torch.arange(128, dtype=torch.float32)
    assert torch.allclose(crops[0, 0, 64], 24 + (u + 0.5) * 112 / 128 - 0.5, atol=1e-3)
    assert torch.allclose(crops[0, 1, :, 64], 20 + (u + 0.5) * 70 / 128 - 0.5, atol=1e-3)


def test_face_at_the_border_is_clipped_not_padded(small):
    images = torch.full((1, 3, 60, 80), 200.0)
    faces = Faces(torch.tensor([[50.0, 30.0, 90.0, 70.0]]), torch.tensor([0]))
    with torch.no_grad():
        out = small(images, faces)
    assert out.extra["crop_box"][0].tolist() == [42.0, 22.0, 80.0, 60.0]
    crops = crop_without_padding(images, faces.image_index, out.extra["crop_theta"], (128, 128))
    # clipped to the image and edge pixels replicated as PIL does: no zero padding anywhere
    assert torch.allclose(crops, torch.tensor(200.0))
    # what plain zero-padded sampling would have given at the right and bottom edges
    zero_padded = affine_crop(images, faces.image_index, out.extra["crop_theta"], (128, 128))
    assert zero_padded[0, 0, -1, -1] < 190.0


def test_outputs_and_extras(small):
    images = torch.rand(1, 3, 80, 90) * 255
    faces = Faces(torch.tensor([[20.0, 10.0, 70.0, 70.0]]), torch.tensor([0]))
    with torch.no_grad():
        out = small(images, faces)
    stages = out.extra["stages"]
    assert out.heatmaps.shape == (1, 98, 16, 16)
    assert len(stages) == 4 and all(s.shape == (1, 99, 16, 16) for s in stages)
    assert torch.equal(out.heatmaps, stages[3][:, :98])
    assert torch.equal(out.extra["background"], stages[3][:, 98:])
    with_bg = AVSSANExtractor(small.net, include_background=True).eval()
    with torch.no_grad():
        out_bg = with_bg(images, faces)
    assert out_bg.heatmaps.shape == (1, 99, 16, 16)
    assert torch.equal(out_bg.heatmaps, stages[3])
    assert torch.equal(with_bg.decode(out_bg), small.decode(out))


def test_hm_to_image_matches_decode_on_peaks(small):
    images = torch.rand(2, 3, 70, 100) * 255
    faces = Faces(torch.tensor([[10.0, 5.0, 60.0, 65.0], [50.0, 20.0, 110.0, 60.0]]), torch.tensor([0, 1]))
    with torch.no_grad():
        out = small(images, faces)
    lm = small.decode(out)
    from lb_avssan.extractor import san_peak_soft_argmax
    from lbcore.extractor import apply_affine

    coords, _ = san_peak_soft_argmax(out.heatmaps, 3)
    assert torch.allclose(apply_affine(out.hm_to_image, coords), lm)
    # every landmark lies inside its clipped crop region
    cb = out.extra["crop_box"]
    assert bool(((lm[..., 0] >= cb[:, None, 0]) & (lm[..., 0] <= cb[:, None, 2])).all())
    assert bool(((lm[..., 1] >= cb[:, None, 1]) & (lm[..., 1] <= cb[:, None, 3])).all())


def test_gradient_reaches_the_full_resolution_pixels(small):
    images = (torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1)) * 255).requires_grad_(True)
    faces = Faces(torch.tensor([[10.0, 10.0, 50.0, 60.0], [70.0, 30.0, 110.0, 80.0]]), torch.tensor([0, 1]))
    out = small(images, faces)
    (grad,) = torch.autograd.grad(out.heatmaps.square().sum(), images)
    assert torch.isfinite(grad).all()
    # inside each face box
    assert grad[0, :, 10:60, 10:50].abs().sum() > 0
    assert grad[1, :, 30:80, 70:110].abs().sum() > 0
    # nothing outside the crop regions (grown by 20 %, one pixel of bilinear support)
    assert grad[0, :, :, 60:].abs().sum() == 0
    assert grad[1, :, :, :60].abs().sum() == 0
    assert grad[0, :, 72:, :].abs().sum() == 0


def test_batched_forward_equals_one_face_at_a_time(small):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 64, 72, generator=g) * 255
    boxes = torch.tensor(
        [[5.0, 5.0, 40.0, 45.0], [30.0, 10.0, 70.0, 60.0], [0.0, 20.0, 30.0, 64.0], [20.0, 0.0, 60.0, 40.0]]
    )
    index = torch.tensor([0, 0, 2, 1])
    with torch.no_grad():
        batch = small(images, Faces(boxes, index))
        lm = small.decode(batch)
        for i in range(4):
            one = small(images[index[i] : index[i] + 1], Faces(boxes[i : i + 1], torch.tensor([0])))
            assert torch.allclose(one.heatmaps[0], batch.heatmaps[i], atol=1e-5, rtol=1e-4), i
            assert torch.allclose(small.decode(one)[0], lm[i], atol=1e-3), i


def test_conformance():
    result = check_extractor("avssan:weights=none,width_div=8")
    assert result["faces"] == 3 and result["points"] == 98


def test_registration_through_a_fresh_plugin_manager(fresh_pm):
    comp = fresh_pm.get("extractors", "avssan")
    assert comp.distribution == "lb-avssan"
    (published,) = [w for w in comp.metadata["weights"] if w.name == "avs-san-wflw"]
    assert published.fits == "avssan" and published.licence == "MIT"
    assert "drive.google.com" in published.url
    ext = fresh_pm.build("extractors", "avssan:weights=none,width_div=8,truncate=true")
    assert isinstance(ext, AVSSANExtractor) and ext.truncate and not ext.training
    assert ext.scheme.num_points == 98 and ext.scheme.eye_corners == (60, 72)
    with pytest.raises(SpecError):
        fresh_pm.build("extractors", "avssan:weights=none,width_div=0")


def test_default_weights_resolution(tmp_path, monkeypatch, small_state_dict):
    from lb_avssan import plugin

    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="avs-san-wflw.pth.tar.*drive.google.com"):
        plugin.avssan()
    with pytest.raises(WeightsError, match="width_div=8"):
        plugin.avssan(width_div=8)
    torch.save(small_state_dict, tmp_path / "demo8.pth")
    demo = WeightsFile(name="avssan-demo", filename="demo8.pth", fits="avssan:width_div=8")
    monkeypatch.setattr(plugin, "DEMO_WEIGHTS", [demo])
    ext = plugin.avssan(width_div=8)
    assert torch.equal(ext.net.features[0].weight, small_state_dict["features.0.weight"])
    with pytest.raises(WeightsError, match="a demo model fits avssan:width_div=8"):
        plugin.avssan(width_div=4)


def test_plugin_import_does_not_import_torch():
    code = "import sys, lb_avssan.plugin; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_forward_on_device(small, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 255
    faces = Faces(torch.tensor([[10.0, 8.0, 50.0, 58.0]]), torch.tensor([0]))
    with torch.no_grad():
        ref = small(images, faces)
        ext = AVSSANExtractor(ITNCPM(width_div=8)).eval()
        ext.load_state_dict(small.state_dict())
        ext = ext.to(device)
        out = ext(images.to(device), faces.to(device))
        lm = ext.decode(out)
    assert out.heatmaps.device.type == device and lm.device.type == device
    assert torch.allclose(out.heatmaps.cpu(), ref.heatmaps, atol=1e-4, rtol=1e-3)
    assert torch.allclose(lm.cpu(), small.decode(ref), atol=1e-2)
