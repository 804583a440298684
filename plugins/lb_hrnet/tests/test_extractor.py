"""The extractor as the attack sees it: Eq. 1 gradients, batching, conformance, the plugin."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lb_hrnet.plugin import hrnet
from lbcore import Faces, heatmap_cosine_loss
from lbcore.schemes import WFLW98
from lbcore.testing import check_extractor


def test_eq1_gradient_reaches_the_full_resolution_pixels(small_extractor, smooth_images):
    images = smooth_images[:, :, :200, :240].clone()
    faces = Faces(torch.tensor([[60.0, 50.0, 140.0, 150.0]]), torch.tensor([1]))
    with torch.no_grad():
        clean = small_extractor(images, faces).heatmaps
    x = (images + torch.randn_like(images)).requires_grad_(True)
    loss = heatmap_cosine_loss(clean, small_extractor(x, faces).heatmaps).sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == images.shape
    # The crop covers 1.25 x the box side (125 px around centre (100, 100)): gradient there ...
    inside = grad[1, :, 50:150, 60:140].abs()
    assert (inside > 0).float().mean() > 0.9
    # ... none outside the crop's reach, and none on the image without faces.
    assert grad[1, :, 170:, :].abs().max() == 0 and grad[1, :, :, 170:].abs().max() == 0
    assert grad[0].abs().max() == 0


def test_batched_faces_from_several_images_equal_single_runs(small_extractor, smooth_images):
    images = smooth_images[:, :, :240, :320]
    boxes = torch.tensor([[20.0, 30.0, 110.0, 130.0], [150.0, 40.0, 230.0, 120.0],
                          [200.0, 150.0, 330.0, 260.0], [-10.0, -5.0, 60.0, 70.0]])
    index = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        out = small_extractor(images, Faces(boxes, index))
        lm = small_extractor.decode(out)
        assert out.heatmaps.shape == (4, 98, 64, 64) and lm.shape == (4, 98, 2)
        for i in (1, 2):
            solo = small_extractor(images[index[i]:index[i] + 1], Faces(boxes[i:i + 1], torch.zeros(1, dtype=torch.long)))
            assert torch.allclose(solo.heatmaps[0], out.heatmaps[i], atol=1e-4, rtol=1e-4)
            assert torch.allclose(small_extractor.decode(solo)[0], lm[i], atol=1e-4)
    # The two faces of image 0 differ; the decoded points lie around their own boxes.
    assert not torch.allclose(out.heatmaps[0], out.heatmaps[1])
    assert (lm[2, :, 0] > 200 - 0.7 * 130).all() and (lm[2, :, 0] < 330 + 0.7 * 130).all()


def test_conformance():
    result = check_extractor("hrnet:weights=none,width=8")
    assert result["faces"] == 3 and result["points"] == 98


def test_scheme_and_spec_keys():
    ext = hrnet(weights="none", width=6)
    assert ext.scheme is WFLW98 and ext.scheme.eye_corners == (60, 72)
    assert hrnet(weights="none", width=6, landmarks=68).scheme.num_points == 68
    assert sum(p.numel() for p in ext.parameters()) == sum(p.numel() for p in ext.network.parameters())
    # The extractor adds no state of its own (mean/std buffers are not persistent).
    assert list(ext.state_dict()) == ["network." + k for k in ext.network.state_dict()]


def test_plugin_registers_through_its_entry_point(fresh_pm):
    comp = fresh_pm.get("extractors", "hrnet")
    assert comp.distribution == "lb-hrnet"
    assert comp.params() == "landmarks: int=98, weights: str='auto', width: int=18, truncate: bool=False"
    (published,) = comp.metadata["weights"]
    assert published.filename == "HR18-WFLW.pth" and published.fits == "hrnet" and published.licence == "MIT"
    assert published.url == "https://1drv.ms/u/s!AiWjZ1LamlxzdTsr_9QZCwJsn5U"
    ext = fresh_pm.build("extractors", "hrnet:weights=none,width=6,landmarks=68,truncate=yes")
    assert ext.truncate and ext.network.width == 6 and ext.network.head[3].out_channels == 68
    assert not ext.training


def test_plugin_module_does_not_import_torch():
    code = "import sys, lb_hrnet.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_forward_on_device(device, small_extractor, smooth_images):
    images = smooth_images[:, :, :160, :200]
    faces = Faces(torch.tensor([[20.0, 30.0, 90.0, 110.0], [110.0, 20.0, 180.0, 100.0]]), torch.tensor([0, 1]))
    with torch.no_grad():
        ref = small_extractor(images, faces)
        ext = small_extractor.to(device)
        out = ext(images.to(device), faces.to(device))
        lm = ext.decode(out)
    assert out.heatmaps.device.type == device and lm.device.type == device
    assert torch.allclose(out.heatmaps.cpu(), ref.heatmaps, atol=1e-3, rtol=1e-3)
    # Landmarks agree except where a near-tie lets the argmax pick another pixel on the GPU.
    close = (lm.cpu() - small_extractor.cpu().decode(ref)).abs().amax(dim=-1) < 1e-3
    assert close.float().mean() > 0.95
