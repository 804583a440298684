"""The differentiable JPEG: tables, closeness to OpenCV's JPEG, gradients, EOT draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lb_codecs.diffjpeg import LUMA_TABLE, diff_jpeg, jpeg_quant_tables, round_cubic, round_ste
from lb_codecs.image import jpeg_roundtrip

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()


def _images():
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee()[:301, :333]]  # the last: odd, not MCU-aligned


def test_quant_tables_follow_libjpeg_scaling():
    luma, chroma = jpeg_quant_tables(50)
    assert torch.equal(luma[0], torch.tensor(LUMA_TABLE, dtype=torch.float32))  # Q50: the base table
    luma, chroma = jpeg_quant_tables(torch.tensor([75.0, 95.0, 10.0, 100.0]))
    assert luma.shape == (4, 8, 8)
    assert luma[0, 0, 0] == 8 and chroma[0, 0, 0] == 9  # floor((16*50+50)/100), floor((17*50+50)/100)
    assert luma[1, 0, 0] == 2 and luma[1, 7, 7] == 10  # scale 10%
    assert luma[2, 0, 0] == 80 and chroma[2].max() == 255  # scale 500%, clamped to baseline
    assert luma[3].max() == 1  # Q100: all ones


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_close_to_opencv_jpeg(quality, record_property):
    """Mean absolute difference to OpenCV's real JPEG, in grey levels (reported)."""
    mads = []
    for img in _images():
        real = jpeg_roundtrip(np.ascontiguousarray(img), quality).astype(np.float32)
        approx = diff_jpeg(_tensor(img), quality)[0].permute(1, 2, 0).numpy()
        mads.append(float(np.abs(approx - real).mean()))
        # the approximation is far closer to the real JPEG than the real JPEG is to the original
        assert mads[-1] < 0.5 * float(np.abs(real - img).mean())
    mad = float(np.mean(mads))
    record_property(f"mad_q{quality}", round(mad, 3))
    print(f"diffjpeg vs OpenCV JPEG, Q{quality}: mean absolute difference {mad:.3f} grey levels")
    assert mad < 1.0


def test_subsampling_444_is_closer_still():
    img = _images()[0]
    real = jpeg_roundtrip(np.ascontiguousarray(img), 75, "444").astype(np.float32)
    approx = diff_jpeg(_tensor(img), 75, subsampling="444")[0].permute(1, 2, 0).numpy()
    assert np.abs(approx - real).mean() < 0.4


@pytest.mark.parametrize("rounding", ["ste", "cubic"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_are_nonzero(rounding, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    img = _tensor(_images()[0][200:264, 200:280]).to(device).requires_grad_(True)
    out = diff_jpeg(img, 50, rounding=rounding)
    assert out.shape == img.shape and out.device.type == device
    target = torch.randn_like(out)
    (g,) = torch.autograd.grad((out * target).sum(), img)
    assert torch.isfinite(g).all()
    assert float(g.abs().mean()) > 1e-3
    assert float((g != 0).float().mean()) > 0.5  # reaches most pixels, not a few


def test_gradient_frequency_response():
    """``cubic`` passes the gradient of low frequencies and damps the high ones that JPEG
    quantises away; ``ste`` is straight-through in every frequency (the real JPEG's effect
    then enters only through the point where the gradient is taken)."""
    img = _tensor(_images()[0][200:264, 200:264])
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((xx + yy) % 2 * 2 - 1).float().expand(1, 3, 64, 64)
    flat = torch.ones(1, 3, 64, 64)
    response = {}
    for rounding in ("ste", "cubic"):
        x = img.clone().requires_grad_(True)
        out = diff_jpeg(x, 50, rounding=rounding)
        (g_hi,) = torch.autograd.grad((out * checker).sum(), x, retain_graph=True)
        (g_lo,) = torch.autograd.grad((out * flat).sum(), x)
        response[rounding] = (float((g_hi * checker).sum()), float((g_lo * flat).sum()))
    hi, lo = response["cubic"]
    assert lo > 0.1 * flat.sum() and hi < 0.05 * lo
    hi, lo = response["ste"]
    assert abs(lo - float(flat.sum())) < 0.1 * float(flat.sum()) and hi > 0.5 * lo


def test_roundings():
    x = torch.tensor([-1.5, -0.4, 0.0, 0.3, 0.5, 1.7], requires_grad=True)
    assert torch.equal(round_ste(x), torch.round(x))
    (g,) = torch.autograd.grad(round_ste(x).sum(), x)
    assert torch.equal(g, torch.ones_like(x))
    y = round_cubic(x)
    assert torch.allclose(y, torch.round(x) + (x - torch.round(x)) ** 3)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, 3 * (x - torch.round(x)).detach() ** 2)


def test_per_image_quality_and_eot_draws(codecs_pm):
    img = _tensor(_images()[0][:64, :64])
    batch = img.expand(3, -1, -1, -1).contiguous()
    per = diff_jpeg(batch, torch.tensor([20.0, 50.0, 95.0]))
    for i, q in enumerate((20, 50, 95)):
        assert torch.equal(per[i], diff_jpeg(img, q)[0])
    err = [float((per[i] - img[0]).abs().mean()) for i in range(3)]
    assert err[0] > err[1] > err[2]

    stage = codecs_pm.build_degradation("diffjpeg:quality_range=30:90")
    torch.manual_seed(0)
    drawn = torch.cat([stage.draw_quality(4, torch.device("cpu")) for _ in range(50)])
    assert drawn.min() >= 30 and drawn.max() <= 90 and len(drawn.unique()) > 20
    torch.manual_seed(1)
    a = stage(batch)
    torch.manual_seed(1)
    b = stage(batch)
    assert torch.equal(a, b)  # seeded by torch's global generator, as the engine does


def test_stage_matches_function(codecs_pm):
    img = _tensor(_images()[1][:48, :40])
    stage = codecs_pm.build_degradation("diffjpeg:quality=60,rounding=cubic")
    assert torch.equal(stage(img), diff_jpeg(img, 60, rounding="cubic"))
