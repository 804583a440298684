"""FANExtractor as an lbcore extractor: contract, gradients, batching, options, devices."""

from __future__ import annotations

import pytest
import torch

from lb_fan.extractor import FANExtractor, decode_heatmaps, face_alignment_crop_theta
from lbcore import ExtractorOutput, Faces
from lbcore.schemes import IBUG68, WFLW98
from lbcore.testing import check_extractor, fresh_plugin_manager

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]


def _small(**kw) -> FANExtractor:
    torch.manual_seed(kw.pop("seed", 0))
    kw.setdefault("width", 32)
    return FANExtractor(**kw).eval()


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def test_conformance_through_the_plugin_manager():
    with fresh_plugin_manager():
        report = check_extractor("fan:weights=none,width=64")
    assert report["points"] == 98 and report["faces"] == 3
    assert report["grad_abs_sum"] > 0


def test_scheme_follows_the_landmark_count():
    assert _small(num_landmarks=98).scheme == WFLW98
    assert _small(num_landmarks=68).scheme == IBUG68


def test_gradient_reaches_exactly_the_full_resolution_pixels_the_crop_reads():
    ext = _small(num_landmarks=68)
    images = _images(2, 200, 300).requires_grad_(True)
    boxes = torch.tensor([[20.0, 30.0, 70.0, 80.0], [200.0, 100.0, 240.0, 150.0], [120.0, 60.0, 180.0, 130.0]])
    faces = Faces(boxes, torch.tensor([0, 0, 1]))
    out = ext(images, faces)
    out.heatmaps.square().sum().backward()
    grad = images.grad.abs().sum(dim=1)  # (B, H, W)
    theta = face_alignment_crop_theta(boxes)
    touched = torch.zeros_like(grad, dtype=torch.bool)
    for i in range(len(faces)):
        img = int(faces.image_index[i])
        x1, y1, x2, y2 = boxes[i].tolist()
        assert grad[img, int(y1): int(y2), int(x1): int(x2)].gt(0).float().mean() > 0.9
        # The crop window [off, off + 256 s] (+1 pixel for bilinear support).
        x0, s = theta[i, 0, 2].item(), theta[i, 0, 0].item()
        y0, t = theta[i, 1, 2].item(), theta[i, 1, 1].item()
        touched[img, max(int(y0) - 1, 0): int(y0 + 256 * t) + 2, max(int(x0) - 1, 0): int(x0 + 256 * s) + 2] = True
    assert grad[~touched].abs().max() == 0  # nothing outside the crops moves
    assert grad[touched].gt(0).any()


@pytest.mark.parametrize("device", DEVICES)
def test_batched_faces_from_several_images_equal_one_at_a_time(device):
    ext = _small(num_landmarks=98, width=16).to(device)
    images = _images(3, 120, 150, seed=2).to(device)
    boxes = torch.tensor(
        [[10.0, 10.0, 60.0, 70.0], [70.0, 20.0, 140.0, 100.0], [-20.0, 40.0, 50.0, 130.0], [30.0, 30.0, 90.0, 90.0], [100.0, 60.0, 170.0, 140.0]],
        device=device,
    )
    index = torch.tensor([0, 0, 1, 2, 2], device=device)
    with torch.no_grad():
        out = ext(images, Faces(boxes, index))
        batched = ext.decode(out)
        assert out.heatmaps.shape == (5, 98, 64, 64)
        assert out.heatmaps.device.type == device
        for i in range(5):
            solo = ext(images[index[i]: index[i] + 1], Faces(boxes[i: i + 1], torch.zeros(1, dtype=torch.long, device=device)))
            torch.testing.assert_close(solo.heatmaps[0], out.heatmaps[i], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ext.decode(solo)[0], batched[i])


def test_decode_uses_the_original_map_and_truncates_on_request():
    ext = _small(num_landmarks=68)
    images = _images(1, 100, 120)
    faces = Faces(torch.tensor([[-10.0, 20.0, 60.0, 95.0]]), torch.tensor([0]))
    with torch.no_grad():
        out = ext(images, faces)
    assert out.extra["decode_theta"].shape == (1, 2, 3)
    pts = ext.decode(out)
    torch.testing.assert_close(pts, decode_heatmaps(out.heatmaps, out.extra["decode_theta"]))
    assert not torch.equal(pts, pts.trunc())  # float by default
    ext.truncate = True
    assert torch.equal(ext.decode(out), pts.trunc())
    # An output without the original's map falls back to the crop geometry (hm_to_image).
    bare = ExtractorOutput(heatmaps=out.heatmaps, hm_to_image=out.hm_to_image)
    ext.truncate = False
    fallback = ext.decode(bare)
    torch.testing.assert_close(fallback, decode_heatmaps(out.heatmaps, out.hm_to_image))
    side = 200.0 * (70.0 + 75.0) / 195.0
    assert (fallback - pts).abs().max() <= side / 256 + 1.5


def test_all_stacks_returns_every_stack_and_keeps_the_last_as_heatmaps():
    ext = _small(num_modules=2, num_landmarks=98, all_stacks=True)
    images = _images(1, 90, 90)
    faces = Faces(torch.tensor([[10.0, 10.0, 80.0, 80.0], [30.0, 20.0, 70.0, 70.0]]), torch.tensor([0, 0]))
    with torch.no_grad():
        out = ext(images, faces)
        stacks = out.extra["stacks"]
        assert stacks.shape == (2, 2, 98, 64, 64)
        assert torch.equal(stacks[-1], out.heatmaps)
        assert not torch.allclose(stacks[0], stacks[1])
        ext.all_stacks = False
        plain = ext(images, faces)
    assert "stacks" not in plain.extra
    torch.testing.assert_close(plain.heatmaps, out.heatmaps)


def test_normalisation_modes():
    crops = torch.tensor([0.0, 127.5, 255.0]).reshape(1, 3, 1, 1)
    unit = _small(normalise="unit").normalise(crops).flatten()
    sym = _small(normalise="symmetric").normalise(crops).flatten()
    torch.testing.assert_close(unit, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(sym, torch.tensor([-1.0, 0.0, 1.0]))


def test_bad_normalise_is_a_spec_error():
    from lbcore import SpecError

    with pytest.raises(SpecError, match="normalise"):
        FANExtractor(normalise="imagenet", width=8)  # type: ignore[arg-type]


@pytest.mark.parametrize("device", DEVICES)
def test_forward_on_device_matches_cpu(device):
    ext = _small(num_modules=2, num_landmarks=68)
    images = _images(2, 96, 128, seed=5)
    faces = Faces(torch.tensor([[10.0, 10.0, 70.0, 80.0], [40.0, 5.0, 120.0, 90.0]]), torch.tensor([0, 1]))
    with torch.no_grad():
        ref = ext(images, faces)
        ext.to(device)
        got = ext(images.to(device), faces.to(device))
    assert got.heatmaps.device.type == device
    torch.testing.assert_close(got.heatmaps.cpu(), ref.heatmaps, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(ext.decode(got).cpu(), ext.decode(ref), atol=1e-3, rtol=0)
