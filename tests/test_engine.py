"""The attack engine: budget, rounding, stop rule, presets, LBtrans, LBmix, ensemble, determinism."""

from __future__ import annotations

import pytest
import torch

from lbcore import hookimpl
from lbcore.engine import PRESETS, AttackConfig, _diversity, attack, preset
from lbcore.losses import heatmap_cosine_loss
from lbcore.optimizers import UpdateRule
from lbcore.plugins import PluginManager
from lbcore.testing import sample_batch
from lbcore.types import Faces


@pytest.fixture
def batch():
    return sample_batch(seed=3)


def _landmarks(ext, images, faces):
    return ext.predict(images, faces)


def test_budget_and_rounding(tiny_extractor, batch):
    images, faces = batch
    images = images + 0.37  # not integer valued
    res = attack(images, faces, tiny_extractor, preset("lb", eps=4, steps=10))
    adv = res.adversarial
    assert torch.equal(adv, adv.round())
    assert adv.min() >= 0 and adv.max() <= 255
    assert float((adv - images).abs().max()) <= 4.0 + 1e-5
    assert torch.allclose(res.linf, (adv - images).abs().flatten(1).amax(1))


def test_paper_stop_rule(tiny_extractor, batch):
    images, faces = batch
    res = attack(images, faces, tiny_extractor, preset("base2", eps=3, steps=20, projection="stop"))
    assert int(res.steps_taken.max()) <= 4
    assert float(res.linf.max()) <= 3.0 + 1e-5
    full = attack(images, faces, tiny_extractor, preset("base2", eps=3, steps=20))
    assert int(full.steps_taken.min()) == 20


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_lowers_eq1_and_moves_landmarks(tiny_extractor, batch, name):
    images, faces = batch
    res = attack(images, faces, tiny_extractor, preset(name))
    # Eq. 1 starts at K (identical heat-maps) and must go down for every image
    assert torch.allclose(res.clean_loss, torch.tensor([10.0, 5.0]), atol=1e-3)
    assert bool((res.final_loss < res.clean_loss - 0.05).all()), (name, res.final_loss)
    before = _landmarks(tiny_extractor, images, faces)
    after = _landmarks(tiny_extractor, res.adversarial, faces)
    moved = (after - before).norm(dim=-1).mean(dim=-1)
    # a random tiny network: argmax maps can be degenerate for one face; most must move
    assert int((moved > 0.5).sum()) >= 2 and float(moved.mean()) > 2.0, (name, moved)


def test_lb_beats_fgsm_at_same_budget(tiny_extractor, batch):
    images, faces = batch
    lb = attack(images, faces, tiny_extractor, preset("lb"))
    b1 = attack(images, faces, tiny_extractor, preset("base1"))
    assert float(lb.final_loss.sum()) < float(b1.final_loss.sum())
    assert int(b1.steps_taken.max()) == 1


def test_deterministic_under_seed(tiny_extractor, batch):
    images, faces = batch
    a = attack(images, faces, tiny_extractor, preset("lbtrans", seed=5))
    b = attack(images, faces, tiny_extractor, preset("lbtrans", seed=5))
    c = attack(images, faces, tiny_extractor, preset("lbtrans", seed=6))
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, c.adversarial)


def test_diversity_transforms_boxes_with_the_image():
    img = torch.zeros(1, 3, 100, 120)
    img[0, :, 40:60, 50:80] = 255.0
    faces = Faces(torch.tensor([[50.0, 40.0, 79.0, 59.0]]), torch.tensor([0]))
    g = torch.Generator().manual_seed(1)
    out, f2 = _diversity(img, faces, 0.6, g)
    assert out.shape == img.shape
    x1, y1, x2, y2 = f2.boxes[0].tolist()
    inside = out[0, 0, round(y1) + 1: round(y2), round(x1) + 1: round(x2)]
    assert float(inside.mean()) > 200  # the bright block moved with its box
    assert float(out[0, 0].sum()) < float(img[0, 0].sum())  # it shrank


def test_diversity_identity_at_scale_one():
    img = torch.rand(1, 3, 20, 30) * 255
    faces = Faces(torch.tensor([[1.0, 2.0, 10.0, 12.0]]), torch.tensor([0]))
    out, f2 = _diversity(img, faces, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(out, img, atol=1e-3)
    assert torch.allclose(f2.boxes, faces.boxes)


class _Recorder(UpdateRule):
    calls: list[int] = []

    def step(self, x, grad, state, eps):
        _Recorder.calls.append(1)
        return x - grad.sign()


class _RecorderPlugin:
    @hookimpl
    def register_optimizers(self, register):
        register("recorder", lambda: _Recorder())


def test_lbmix_alternates_rules(tiny_extractor, batch):
    images, faces = batch
    pm = PluginManager(load_entry_points=False)
    pm.add_plugin(_RecorderPlugin(), name="rec")
    _Recorder.calls = []
    attack(images, faces, tiny_extractor, AttackConfig(optimizer="recorder", steps=6, mix=True), plugin_manager=pm)
    assert len(_Recorder.calls) == 3
    _Recorder.calls = []
    attack(images, faces, tiny_extractor, AttackConfig(optimizer="recorder", steps=6), plugin_manager=pm)
    assert len(_Recorder.calls) == 6


def test_ensemble_sums_losses(tiny_plugin, batch):
    from lb_test_tiny_model import tiny  # installed by the tiny_plugin fixture

    images, faces = batch
    e1, e2 = tiny(seed=1), tiny(points=7, seed=2)
    res = attack(images, faces, [e1, e2], preset("lb", steps=5))
    assert torch.allclose(res.clean_loss, torch.tensor([24.0, 12.0]), atol=1e-3)
    with torch.no_grad():
        expect = sum(
            torch.zeros(2).index_add(0, faces.image_index, heatmap_cosine_loss(e(images, faces).heatmaps, e(res.adversarial, faces).heatmaps))
            for e in (e1, e2)
        )
    assert torch.allclose(res.final_loss, expect, atol=1e-4)


def test_warm_start_is_projected(tiny_extractor, batch):
    images, faces = batch
    init = images + 100.0
    res = attack(images, faces, tiny_extractor, preset("lb", eps=5, steps=1), init=init)
    assert float(res.linf.max()) <= 5.0


def test_landmark_displacement_loss_also_works(tiny_extractor, batch):
    images, faces = batch
    res = attack(images, faces, tiny_extractor, preset("lb", loss="landmark-displacement:temperature=2", random_start=2.0))
    # clean loss is 0 (no displacement); the attack drives the mean displacement up
    assert torch.allclose(res.clean_loss, torch.zeros(2))
    assert bool((res.final_loss < -1.0).all()), res.final_loss


def test_unknown_preset():
    from lbcore.errors import SpecError

    with pytest.raises(SpecError, match="valid: base1, base2, lb, lbtrans, lbmix"):
        preset("pgd")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_device(tiny_extractor, batch):
    images, faces = batch
    res = attack(images, faces, tiny_extractor, preset("lb", steps=3), device="cuda")
    assert res.adversarial.device.type == "cuda"


def test_random_start_leaves_pixels_outside_faces_alone(tiny_extractor):
    images = (torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255).round()
    faces = Faces(torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.tensor([0]))
    res = attack(images, faces, tiny_extractor, preset("lb", steps=3, random_start=1.0))
    changed = (res.adversarial != images).any(dim=1)[0]
    assert bool(changed[12:38, 12:38].any())
    assert not bool(changed[:, 45:].any()) and not bool(changed[45:, :].any())


def test_final_loss_costs_a_forward_only_when_read(tiny_extractor, batch):
    images, faces = batch
    calls = []
    handle = tiny_extractor.register_forward_hook(lambda *a: calls.append(1))
    try:
        res = attack(images, faces, tiny_extractor, preset("lb", steps=4))
        during = len(calls)
        assert during == 1 + 4  # the clean pass and one per step: no extra pass for the report
        assert len(res.loss_history) == 4 and len(res.loss_history[0]) == images.shape[0]
        assert all(isinstance(v, float) for v in res.loss_history[-1])
        loss = res.final_loss
        assert len(calls) == during + 1
        assert res.final_loss is loss and len(calls) == during + 1  # computed once
    finally:
        handle.remove()
    loss_fn = heatmap_cosine_loss
    with torch.no_grad():
        expect = torch.zeros(images.shape[0]).index_add(
            0, faces.image_index, loss_fn(tiny_extractor(images, faces).heatmaps,
                                          tiny_extractor(res.adversarial, faces).heatmaps))
    assert torch.allclose(loss, expect, atol=1e-4)
