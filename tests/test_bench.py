"""The benchmark and the engine's performance paths: same results, real figures, a CLI smoke test."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from lbcore import extractor as extractor_mod
from lbcore.apps.bench import (
    BenchOptions,
    _check_targets,
    baseline_attack,
    count_flops,
    device_peak,
    format_table,
    run_bench,
    synthetic_batch,
)
from lbcore.engine import Performance, _compiled, attack, preset
from lbcore.extractor import affine_crop
from lbcore.testing import sample_batch
from lbcore.types import Faces

TINY_FAN = "fan:weights=none,width=16,landmarks=68,resolution=64"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _old_sample(images, image_index, grid, mode):
    """affine_crop's sampling before the optimisation: copy each face's whole image."""
    src = images.index_select(0, image_index)
    return F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _random_theta(n, gen):
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.rand(n, generator=gen) + 0.5
    theta[:, 1, 1] = torch.rand(n, generator=gen) + 0.5
    theta[:, :, 2] = torch.rand(n, 2, generator=gen) * 40 - 5
    return theta


@pytest.mark.parametrize("index", [[0, 1, 2], [0, 0, 2], [2, 0, 0, 1], [1, 1, 1, 1, 1, 1, 0], [2, 2, 2, 2, 2, 2, 2, 0]])
def test_crop_per_image_is_bit_identical(index, monkeypatch):
    gen = torch.Generator().manual_seed(len(index))
    images = torch.rand(3, 3, 50, 60, generator=gen) * 255
    idx = torch.tensor(index)
    theta = _random_theta(len(index), gen)
    weights = torch.randn(len(index), 3, 16, 20, generator=gen)
    new_in = images.clone().requires_grad_(True)
    new = affine_crop(new_in, idx, theta, (16, 20))
    (new * weights).sum().backward()
    monkeypatch.setattr(extractor_mod, "_sample_per_image", _old_sample)
    old_in = images.clone().requires_grad_(True)
    old = affine_crop(old_in, idx, theta, (16, 20))
    (old * weights).sum().backward()
    assert torch.equal(new, old)  # every crop value is computed the same way
    assert torch.allclose(new_in.grad, old_in.grad, atol=1e-4)  # only summation order differs


def test_engine_results_unchanged_by_crop_optimisation(tiny_extractor, monkeypatch):
    images, _ = sample_batch(seed=4)
    # two faces in image 0, one in image 1: exercises the side-by-side sampling
    faces = Faces(torch.tensor([[4.0, 6.0, 40.0, 44.0], [30.0, 20.0, 60.0, 58.0], [10.0, 8.0, 50.0, 52.0]]),
                  torch.tensor([0, 0, 1]))
    cfg = preset("lb", steps=8, seed=3)
    new = attack(images, faces, tiny_extractor, cfg)
    monkeypatch.setattr(extractor_mod, "_sample_per_image", _old_sample)
    old = attack(images, faces, tiny_extractor, cfg)
    diff = (new.adversarial - old.adversarial).abs()
    # identical up to the rare pixel whose gradient sign flips with summation order
    assert float((diff > 0).float().mean()) < 0.002, float((diff > 0).float().mean())
    assert torch.allclose(new.final_loss, old.final_loss, atol=0.05)


# Eq. 1 is at its maximum at the clean image, so its gradient there is zero up to rounding:
# the first step from the clean image follows rounding noise, and two correct implementations
# that sum in different orders go different ways. Pixel-by-pixel comparisons therefore start
# from the same random point (random_start), where the gradient is real; from the clean start
# attacks are compared by what they achieve (Eq. 1).
def test_channels_last_gives_the_same_attack(tiny_extractor):
    """NHWC convolutions sum in another order: the same images (up to a few sign flips of
    near-zero gradients), and the same strength from the clean start."""
    images, faces = sample_batch(seed=3)
    one = preset("base2", steps=3, random_start=4.0)
    plain1 = attack(images, faces, tiny_extractor, one).adversarial
    nhwc1 = attack(images, faces, tiny_extractor, one, performance=Performance(channels_last=True)).adversarial
    assert float(((plain1 - nhwc1).abs() > 0).float().mean()) < 0.01
    tiny_extractor.to(memory_format=torch.contiguous_format)
    cfg = preset("lb", steps=6)
    plain = attack(images, faces, tiny_extractor, cfg)
    nhwc = attack(images, faces, tiny_extractor, cfg, performance=Performance(channels_last=True))
    assert torch.allclose(plain.final_loss, nhwc.final_loss, atol=0.1)
    assert bool((nhwc.final_loss < nhwc.clean_loss - 0.02).all())


def test_bf16_autocast_keeps_the_budget_in_fp32(tiny_extractor):
    images, faces = sample_batch(seed=3)
    res = attack(images, faces, tiny_extractor, preset("lb", eps=6, steps=6),
                 performance=Performance(amp="bf16"))
    assert res.adversarial.dtype == torch.float32
    assert torch.equal(res.adversarial, res.adversarial.round())
    assert float((res.adversarial - images).abs().max()) <= 6.0 + 1e-5
    assert res.final_loss.dtype == torch.float32
    assert bool((res.final_loss < res.clean_loss - 0.02).all())  # still an attack


def test_unknown_amp_is_a_spec_error(tiny_extractor):
    from lbcore.errors import SpecError

    images, faces = sample_batch(seed=3)
    with pytest.raises(SpecError, match="unknown amp 'fp8'"):
        attack(images, faces, tiny_extractor, preset("lb", steps=1), performance=Performance(amp="fp8"))


def test_compile_patches_only_the_network_and_restores_it(tiny_extractor, monkeypatch):
    calls = []

    def fake_compile(fn, dynamic=None):
        calls.append(fn)

        def wrapped(x):
            wrapped.n += 1
            return fn(x)

        wrapped.n = 0
        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    with _compiled([tiny_extractor], True):
        patched = tiny_extractor.forward_crops
        images, faces = sample_batch(seed=3)
        tiny_extractor(images, faces)
        assert patched.n == 1
    assert "forward_crops" not in vars(tiny_extractor)  # the class method is back
    with _compiled([tiny_extractor], True):
        pass
    assert len(calls) == 1  # compiled once, cached for the next attack


def _seen_pixels(ext, images, faces):
    """Pixels inside some face crop: those with a gradient of the heat-maps."""
    x = images.clone().requires_grad_(True)
    for p in ext.parameters():
        p.requires_grad_(False)
    (g,) = torch.autograd.grad(ext(x, faces).heatmaps.abs().sum(), x)
    return g != 0


@pytest.mark.parametrize("name", ["base1", "base2", "lb", "lbmix", "lbtrans"])
def test_baseline_does_the_same_work_as_the_engine(tiny_extractor, name):
    """The per-image baseline reaches the engine's adversarial images (rounding aside)."""
    images, faces = sample_batch(seed=3)
    if name != "lbtrans":  # LBtrans draws its resize per batch in the engine, per image here
        same_start = preset(name, steps=4, seed=2, random_start=4.0)
        base = baseline_attack(images, faces, tiny_extractor, same_start)
        eng = attack(images, faces, tiny_extractor, same_start).adversarial
        # compare where the extractor sees the image (outside, the random start is not attacked)
        seen = _seen_pixels(tiny_extractor, images, faces)
        differing = float(((base - eng).abs() > 0)[seen].float().mean())
        assert differing < 0.01, (name, differing)
    cfg = preset(name, steps=10, seed=2)
    base = baseline_attack(images, faces, tiny_extractor, cfg)
    eng = attack(images, faces, tiny_extractor, cfg).adversarial
    assert base.shape == eng.shape
    assert torch.equal(base, base.round()) and float((base - images).abs().max()) <= cfg.eps + 1e-5
    # from the clean start: the same strength
    with torch.no_grad():
        from lbcore.losses import heatmap_cosine_loss

        c = tiny_extractor(images, faces).heatmaps
        lb = heatmap_cosine_loss(c, tiny_extractor(base, faces).heatmaps)
        le = heatmap_cosine_loss(c, tiny_extractor(eng, faces).heatmaps)
    assert torch.allclose(lb, le, atol=0.15), (lb, le)
    assert bool((lb < 4.95).all())  # K=5 at the clean image


def test_baseline_leaves_weights_requiring_no_grad_and_refuses_eot(tiny_extractor):
    from lbcore.errors import SpecError

    images, faces = sample_batch(seed=3)
    baseline_attack(images, faces, tiny_extractor, preset("lb", steps=1))
    assert not any(p.requires_grad for p in tiny_extractor.parameters())
    with pytest.raises(SpecError, match="projection=ball only"):
        baseline_attack(images, faces, tiny_extractor, preset("lb", eot=("jpeg",)))


def test_flop_count_of_the_tiny_network(tiny_extractor):
    flops = count_flops(tiny_extractor, 64)
    # three 3x3 convolutions: 3->16 at 32x32, 16->16 stride 2 to 16x16, 16->5 at 16x16; 2 FLOPs per MAC
    forward = 2 * 9 * (3 * 16 * 32 * 32 + 16 * 16 * 16 * 16 + 16 * 5 * 16 * 16)
    crop = 2 * 2 * 2 * 32 * 32 + 24  # crop grid (F,1024,2)@(2,2) and the heat-map map composition
    assert flops["forward"] == forward + crop
    # backward to the image only: each convolution's input gradient costs its forward
    assert flops["step"] == 2 * forward + crop


def test_cpu_peak_is_measured():
    peak, source = device_peak("cpu")
    assert 1e8 < peak < 1e14
    assert "measured" in source and "float32" in source


def test_synthetic_batch_is_deterministic():
    a, fa = synthetic_batch(3, 64, seed=1)
    b, fb = synthetic_batch(3, 64, seed=1)
    assert torch.equal(a, b) and torch.equal(fa.boxes, fb.boxes)
    assert a.shape == (3, 3, 64, 64) and float(a.min()) >= 0 and float(a.max()) <= 255
    assert fa.image_index.tolist() == [0, 1, 2]


def test_run_bench_rows_and_targets(tiny_plugin):
    from lbcore.plugins import reset_plugin_manager

    reset_plugin_manager()
    try:
        res = run_bench(BenchOptions(extractors=("tiny",), attacks=("lb", "base1"), batches=(1, 3), steps=3,
                                     image_size=48, baseline_faces=2, amp="none", channels_last=False))
    finally:
        reset_plugin_manager()
    assert [(r["attack"], r["batch"]) for r in res["rows"]] == [("lb", 1), ("lb", 3), ("base1", 1), ("base1", 3)]
    for r in res["rows"]:
        assert r["faces_per_s"] > 0 and r["baseline_faces_per_s"] > 0
        assert r["speedup"] == pytest.approx(r["faces_per_s"] / r["baseline_faces_per_s"], rel=0.01)
        assert r["speedup_cpu"] == pytest.approx(r["faces_per_cpu_s"] / r["baseline_faces_per_cpu_s"], rel=0.01)
        assert 0 < r["flop_utilisation"] < 1
        # the engine's and the baseline's attacks reach the same Eq. 1 value on the same faces
        assert r["loss_engine"] == pytest.approx(r["loss_baseline"], abs=0.3)
        assert r["loss_engine"] < 4.999 and r["loss_baseline"] < 4.999  # K=5 at the clean image
    assert [r["steps"] for r in res["rows"]] == [3, 3, 1, 1]
    # one forward+backward per step and face, as the per-image baseline (no stop rule here)
    assert [r["passes_per_face"] for r in res["rows"]] == [3, 3, 1, 1]
    assert [r["baseline_passes_per_face"] for r in res["rows"]] == [3, 3, 1, 1]
    assert res["rows"][2]["gflop_per_face"] < res["rows"][0]["gflop_per_face"]
    lines = format_table(res)
    assert lines[0].startswith("device: cpu") and any("speedup >= 3x" in ln for ln in lines)


def test_target_checks():
    result = {"device": "NVIDIA H100 80GB HBM3 (cuda:0)", "device_type": "cuda", "rows": [
        {"extractor": "hrnet:weights=none", "attack": "lb", "batch": 64, "steps": 20, "faces_per_s": 612.0,
         "speedup": 40.0},
        {"extractor": "fan:weights=none", "attack": "lb", "batch": 64, "steps": 20, "faces_per_s": 100.0,
         "speedup": 9.0}]}
    assert _check_targets(result) == ["HRNet-W18, LB attack (T=20): >= 500 faces/s: hrnet:weights=none batch 64 "
                                      "612 faces/s -> met"]
    cpu = {"device": "cpu: x", "device_type": "cpu", "rows": [
        {"extractor": "hrnet:weights=none", "attack": "lb", "batch": 16, "steps": 20, "faces_per_s": 2.0, "speedup": 2.5,
         "speedup_cpu": 3.2},
        {"extractor": "fan:weights=none", "attack": "lb", "batch": 4, "steps": 20, "faces_per_s": 2.0, "speedup": 3.5}]}
    assert _check_targets(cpu) == ["speedup >= 3x over the baseline at batch 16: hrnet:weights=none lb 2.5x wall-clock "
                                   "-> NOT met; 3.2x in CPU time -> met"]


def test_lb_bench_smoke():
    """`lb bench` on a tiny FAN, two steps: the command and its JSON keys cannot rot."""
    pytest.importorskip("lb_fan")
    from lbcore.cli import cli

    out = CliRunner().invoke(cli, ["bench", "--extractor", TINY_FAN, "--batch", "1", "--batch", "2", "--steps", "2",
                                   "--image-size", "80", "--amp", "none", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert res["device"].startswith("cpu")
    assert [r["batch"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert {"extractor", "attack", "batch", "faces_per_s", "baseline_faces_per_s", "speedup",
                "peak_mem_mb"} <= set(r)
        assert r["extractor"] == TINY_FAN and r["attack"] == "lb" and r["faces_per_s"] > 0
    text = CliRunner().invoke(cli, ["bench", "--extractor", TINY_FAN, "--batch", "1", "--steps", "1",
                                    "--image-size", "80", "--baseline-faces", "0", "--markdown"])
    assert text.exit_code == 0, text.output
    assert "| device | extractor |" in text.output and "targets:" in text.output


def test_lb_bench_bad_input_is_one_line():
    from lbcore.cli import cli

    out = CliRunner().invoke(cli, ["bench", "--extractor", "no-such-extractor", "--batch", "1", "--steps", "1"])
    assert out.exit_code != 0
    assert "lb: error:" in out.output and "no-such-extractor" in out.output


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_engine_amp_on_device(tiny_extractor, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    images, faces = sample_batch(seed=3)
    amp = "bf16" if device == "cpu" else "fp16"
    res = attack(images, faces, tiny_extractor, preset("lb", steps=3), device=device,
                 performance=Performance(amp=amp, channels_last=True))
    assert res.adversarial.device.type == device
    assert float((res.adversarial.cpu() - images).abs().max()) <= 15.0 + 1e-5
