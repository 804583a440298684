"""Transfer-oriented attack fields (issue 15): lowfreq, box_jitter, ti_rel, step_schedule."""

from __future__ import annotations

import pytest
import torch

from lbcore.engine import _jitter_boxes, _lowpass, _schedule, _smooth_rel, attack, preset
from lbcore.errors import SpecError
from lbcore.testing import sample_batch
from lbcore.types import Faces


@pytest.fixture
def batch():
    return sample_batch(seed=3)


def _high_share(delta: torch.Tensor, keep: int) -> float:
    """Share of the perturbation's spectral energy above ``keep`` cycles per image side."""
    spec = torch.fft.fft2(delta).abs() ** 2
    h, w = delta.shape[-2:]
    fy = torch.fft.fftfreq(h).abs().view(-1, 1) * h
    fx = torch.fft.fftfreq(w).abs().view(1, -1) * w
    high = (fy > keep) | (fx > keep)
    return float(spec[..., high].sum() / spec.sum().clamp_min(1e-12))


def test_lowpass_removes_high_frequencies():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1, 3, 64, 80, generator=g)
    low = _lowpass(t, 8)
    assert low.shape == t.shape
    # a block mean then bilinear upsampling keeps almost nothing above 1/8 of the sampling rate
    assert _high_share(low, 64 // 8) < 0.05 < _high_share(t, 64 // 8)
    # convex combinations: the budget cannot grow
    assert float(low.abs().max()) <= float(t.abs().max()) + 1e-6


def test_lowfreq_attack_is_smooth_and_still_works(tiny_extractor, batch):
    images, faces = batch
    base = attack(images, faces, tiny_extractor, preset("lb"))
    low = attack(images, faces, tiny_extractor, preset("lb", lowfreq=4))
    keep = images.shape[-2] // 4
    d_base, d_low = base.adversarial - images, low.adversarial - images
    assert _high_share(d_low, keep) < 0.5 * _high_share(d_base, keep)
    assert float(d_low.abs().max()) <= 15 + 1e-5
    # the tiny random network answers mostly to fine detail: the loss falls, but less than lb's
    assert bool((low.final_loss < low.clean_loss - 0.01).all()), low.final_loss


def test_box_jitter_boxes_vary_but_are_reproducible():
    boxes = torch.tensor([[40.0, 30.0, 120.0, 130.0], [10.0, 10.0, 50.0, 60.0]])
    a = _jitter_boxes(boxes, 0.1, torch.Generator().manual_seed(1))
    b = _jitter_boxes(boxes, 0.1, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    c1, c2 = _jitter_boxes(boxes, 0.1, gen), _jitter_boxes(boxes, 0.1, gen)
    assert torch.equal(a, b)
    assert not torch.equal(c1, c2)
    size, new = boxes[:, 2:] - boxes[:, :2], a[:, 2:] - a[:, :2]
    ratio = new / size
    assert bool(((ratio >= 0.9 - 1e-5) & (ratio <= 1.1 + 1e-5)).all())
    # one scale for both sides (aspect ratio kept); the centre moves by at most j/2 of the size
    assert torch.allclose(ratio[:, 0], ratio[:, 1])
    shift = ((a[:, :2] + a[:, 2:]) - (boxes[:, :2] + boxes[:, 2:])).abs() / 2
    assert bool((shift <= 0.05 * size + 1e-4).all())


def test_box_jitter_attack_seeded_and_lowers_loss(tiny_extractor, batch):
    images, faces = batch
    a = attack(images, faces, tiny_extractor, preset("lb", box_jitter=0.1, seed=2))
    b = attack(images, faces, tiny_extractor, preset("lb", box_jitter=0.1, seed=2))
    c = attack(images, faces, tiny_extractor, preset("lb", box_jitter=0.1, seed=3))
    plain = attack(images, faces, tiny_extractor, preset("lb", seed=2))
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, c.adversarial)
    assert not torch.equal(a.adversarial, plain.adversarial)
    assert bool((a.final_loss < a.clean_loss - 0.05).all()), a.final_loss


def test_box_jitter_with_diversity_runs(tiny_extractor, batch):
    images, faces = batch
    res = attack(images, faces, tiny_extractor, preset("lb", box_jitter=0.1, diversity_prob=1.0, steps=3))
    assert float((res.adversarial - images).abs().max()) <= 15 + 1e-5


def test_ti_rel_scales_with_face_size():
    g = torch.zeros(2, 3, 64, 64)
    g[:, :, 32, 32] = 1.0
    faces = Faces(torch.tensor([[20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 40.0, 40.0]]), torch.tensor([0, 1]))
    out = _smooth_rel(g, faces, 0.1)  # sigma 1 pixel for image 0, 4 pixels for image 1
    assert float(out[0].amax()) > 3 * float(out[1].amax())
    assert torch.allclose(out.sum((2, 3)), g.sum((2, 3)), atol=1e-4)


def test_ti_rel_attack_lowers_loss(tiny_extractor, batch):
    images, faces = batch
    res = attack(images, faces, tiny_extractor, preset("lb", ti_rel=0.05))
    assert bool((res.final_loss < res.clean_loss - 0.05).all()), res.final_loss


def test_step_schedule():
    assert _schedule("cosine", 0, 20) == pytest.approx(2.0)
    assert _schedule("cosine", 10, 20) == pytest.approx(1.0)
    assert _schedule("linear", 15, 20) == pytest.approx(0.5)
    assert sum(_schedule("linear", t, 20) for t in range(20)) == pytest.approx(21.0)
    with pytest.raises(SpecError, match="step_schedule"):
        _schedule("warp", 0, 20)
