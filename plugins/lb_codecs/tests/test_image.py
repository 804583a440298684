"""Real JPEG (OpenCV) and the everyday image stages on tensors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lb_codecs.image import jpeg_roundtrip, psnr

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _skip_no_cuda(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float()


def test_jpeg_matches_opencv_imwrite_defaults(astronaut):
    """quality=Q with the default subsampling is exactly OpenCV's JPEG at that quality."""
    bgr = np.ascontiguousarray(astronaut[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    expected = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    got = jpeg_roundtrip(astronaut, 75)
    assert got.dtype == np.uint8 and got.shape == astronaut.shape
    assert np.array_equal(got, expected)
    # OpenCV's default chroma subsampling is 4:2:0: asking for it explicitly changes nothing.
    ok, buf420 = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 75,
                                            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
    assert buf420.tobytes() == buf.tobytes()


def test_jpeg_quality_moves_psnr(astronaut):
    values = [psnr(astronaut, jpeg_roundtrip(astronaut, q)) for q in (10, 50, 75, 95)]
    assert values == sorted(values) and values[0] < values[-1] - 8
    assert 30 < values[1] < values[2] < 45
    # 4:4:4 keeps more colour detail than the default 4:2:0 at the same quality.
    assert psnr(astronaut, jpeg_roundtrip(astronaut, 75, "444")) > values[2]


def test_jpeg_odd_size_and_validation(astronaut):
    img = astronaut[:37, :53]
    out = jpeg_roundtrip(np.ascontiguousarray(img), 50)
    assert out.shape == (37, 53, 3)
    with pytest.raises(ValueError):
        jpeg_roundtrip(img.astype(np.float32), 50)


@pytest.mark.parametrize("device", DEVICES)
def test_jpeg_stage_on_tensors(codecs_pm, astronaut, device):
    _skip_no_cuda(device)
    stage = codecs_pm.build_degradation("jpeg:quality=50")
    x = torch.stack([_tensor(astronaut[:64, :80])[0], _tensor(astronaut[100:164, 200:280])[0]]).to(device)
    y = stage(x + 0.3)  # non-integer input: rounded to 8 bits first
    assert y.shape == x.shape and y.device.type == device and y.dtype == torch.float32
    for i in range(2):
        ref = jpeg_roundtrip(np.ascontiguousarray(x[i].permute(1, 2, 0).cpu().numpy().astype(np.uint8)), 50)
        assert torch.equal(y[i].cpu(), torch.from_numpy(ref).permute(2, 0, 1).float())
    assert not y.requires_grad


def test_resize_blur_noise(codecs_pm, astronaut):
    x = _tensor(astronaut[:96, :128]).requires_grad_(True)
    smooth = _tensor(np.full((96, 128, 3), 100, np.uint8))
    for spec in ("resize:scale=0.5", "blur:sigma=1.5"):
        stage = codecs_pm.build_degradation(spec)
        y = stage(x)
        assert y.shape == x.shape
        # low-pass: a flat image stays flat, a detailed one loses detail
        assert torch.allclose(stage(smooth), smooth, atol=1e-3)
        assert float((y - x).detach().abs().mean()) > 1.0
        (g,) = torch.autograd.grad(y.sum(), x)
        assert float(g.abs().sum()) > 0
    x = x.detach()
    weak = codecs_pm.build_degradation("blur:sigma=0.5")(x)
    strong = codecs_pm.build_degradation("blur:sigma=3")(x)
    assert float((strong - x).abs().mean()) > float((weak - x).abs().mean())

    noise = codecs_pm.build_degradation("noise:std=4,seed=1")
    n1 = noise(smooth) - smooth
    assert abs(float(n1.std()) - 4.0) < 0.2 and abs(float(n1.mean())) < 0.2
    n2 = noise(smooth) - smooth
    assert not torch.equal(n1, n2)  # a new draw each call
    again = codecs_pm.build_degradation("noise:std=4,seed=1")(smooth) - smooth
    assert torch.equal(n1, again)  # seeded: reproducible
    assert codecs_pm.build_degradation("noise:std=50")(smooth * 0 + 250).max() <= 255


def test_blur_matches_opencv_gaussian(codecs_pm, astronaut):
    img = np.ascontiguousarray(astronaut[:80, :90])
    sigma = 1.5
    k = 2 * int(np.ceil(3 * sigma)) + 1
    ref = cv2.GaussianBlur(img.astype(np.float32), (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
    got = codecs_pm.build_degradation(f"blur:sigma={sigma}")(_tensor(img))[0].permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() < 0.05
