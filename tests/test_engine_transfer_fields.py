"""Transfer-oriented attack fields (issue 15): box_jitter, ti_rel."""

from __future__ import annotations

import pytest
import torch

from lbcore.engine import _jitter_boxes, _smooth_rel, attack, preset
from lbcore.testing import sample_batch
from lbcore.types import Faces


@pytest.fixture
def batch():
    return sample_batch(seed=3)


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
