"""Transfer-oriented attack fields (issue 15): box_jitter, ti_rel, coarse, ghost, rotate, double; the shape-target loss."""

from __future__ import annotations

import pytest
import torch

from lbcore.engine import (
    _Coarse,
    _double_start,
    _Ghost,
    _jitter_boxes,
    _rotate,
    _smooth_rel,
    attack,
    preset,
)
from lbcore.errors import SpecError
from lbcore.extractor import ConvOutput, ResidualAdd, conv_outputs, residual_adds
from lbcore.losses import ShapeTargetLoss
from lbcore.perceptual import budget_map
from lbcore.testing import sample_batch
from lbcore.types import ExtractorOutput, Faces


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


def test_coarse_grid_follows_face_size_and_stays_in_budget():
    x = torch.full((2, 3, 64, 64), 100.0)
    faces = Faces(torch.tensor([[20.0, 20.0, 36.0, 36.0], [0.0, 0.0, 64.0, 64.0]]), torch.tensor([0, 1]))
    c = _Coarse(x, faces, 8, 15.0)  # cells of 2 and 8 pixels
    assert [tuple(g.shape[-2:]) for g in c.grids] == [(32, 32), (8, 8)]
    from lbcore.optimizers import MomentumIterativeFGSM

    rule = MomentumIterativeFGSM(alpha=4.0)
    g = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for _ in range(10):
        out = c.step(rule, g)
    d = out - x
    assert float(d.abs().max()) <= 15 + 1e-4
    assert float(d.abs().max()) > 14  # the grid saturates: the whole budget is used
    # image 1's change is smooth: neighbouring pixels differ far less than the budget
    assert float((d[1, :, :, 1:] - d[1, :, :, :-1]).abs().max()) < 8
    assert float(d[0].abs().mean()) > 0 and c.grids[0].abs().max() <= 15


def test_coarse_attack_lowers_loss_and_is_smooth(tiny_extractor, batch):
    images, faces = batch
    images = images.round()  # (8-bit input: the output's rounding adds no pixel-level noise)
    res = attack(images, faces, tiny_extractor, preset("lb", coarse=8))
    plain = attack(images, faces, tiny_extractor, preset("lb"))
    # (the tiny random network moves little under any smooth change: plain lb lowers it 10 -> 8.0, 5 -> 4.8)
    assert bool((res.final_loss < res.clean_loss - 0.02).all()), res.final_loss
    tv = lambda d: float((d[..., 1:] - d[..., :-1]).abs().mean())  # noqa: E731
    assert tv(res.adversarial - images) < 0.5 * tv(plain.adversarial - images)
    assert float((res.adversarial - images).abs().max()) <= 15


def test_shape_target_loss_is_zero_at_the_target():
    c = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [10.0, 20.0], [0.0, 20.0]]])
    loss = ShapeTargetLoss(dx=0.1, dy=0.25, scale=0.5)
    target = torch.tensor([[[2.5, 5.0], [7.5, 5.0], [7.5, 15.0], [2.5, 15.0]]]) + torch.tensor([2.0, 5.0])
    assert float(loss(ExtractorOutput(landmarks=c), ExtractorOutput(landmarks=target))) < 1e-6
    assert float(loss(ExtractorOutput(landmarks=c), ExtractorOutput(landmarks=c))) > 0.1


def test_shape_target_attack_pulls_towards_the_target(tiny_extractor, batch):
    images, faces = batch
    # (a soft soft-argmax: the tiny random network's heat-maps are flat, its hard argmax jumps)
    res = attack(images, faces, tiny_extractor, preset("lb", loss="shape-target:dy=0.3,temperature=0.2"))
    assert bool((res.final_loss < res.clean_loss - 0.01).all()), (res.clean_loss, res.final_loss)


class _Functional(torch.nn.Module):
    """A network that runs its convolution functionally and marks the output (as lb-mediapipe does)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
        self.tap = ConvOutput()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tap(torch.nn.functional.conv2d(x, self.w, padding=1))


def test_conv_outputs_finds_modules_and_functional_taps(tiny_extractor):
    assert conv_outputs(tiny_extractor), "the tiny FAN's Conv2d modules"
    net = _Functional()
    assert conv_outputs(net) == [net.tap]


def test_ghost_erodes_only_while_active_and_per_channel():
    net = _Functional()
    x = torch.rand(2, 3, 8, 8)
    clean = net(x)
    ghost = _Ghost([net], 0.25, seed=0, dev=torch.device("cpu"))  # type: ignore[list-item]
    try:
        assert torch.equal(net(x), clean)  # off: the member itself
        with ghost.active():
            a, b = net(x), net(x)
        assert torch.equal(net(x), clean)
    finally:
        ghost.close()
    assert not torch.equal(a, b)  # a fresh ghost each pass
    ratio = a / clean
    per_channel = ratio.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-4)
    assert bool(((ratio - 1).abs() <= 0.25 + 1e-4).all())
    assert not bool(((ratio - 1).abs() < 1e-6).all())
    assert torch.equal(net(x), clean)  # hooks removed


def test_ghost_attack_seeded_lowers_loss_and_leaves_the_member_intact(tiny_extractor, batch):
    images, faces = batch
    before = tiny_extractor(images, faces).heatmaps.clone()
    a = attack(images, faces, tiny_extractor, preset("lb", ghost=0.2, seed=1))
    b = attack(images, faces, tiny_extractor, preset("lb", ghost=0.2, seed=1))
    plain = attack(images, faces, tiny_extractor, preset("lb", seed=1))
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, plain.adversarial)
    assert bool((a.final_loss < a.clean_loss - 0.05).all()), a.final_loss
    assert torch.equal(tiny_extractor(images, faces).heatmaps, before)  # no hook left behind


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_ghost_out_of_range_is_a_spec_error(bad):
    with pytest.raises(SpecError, match="ghost"):
        preset("lb", ghost=bad)


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.add = ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, self.branch(x))


def test_residual_add_scales_only_the_branch_gradient():
    net = _Residual()
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    (g1,) = torch.autograd.grad(net(x).sum(), x)
    y1 = net(x).detach()
    net.add.gamma = 0.25
    y2 = net(x)
    (g2,) = torch.autograd.grad(y2.sum(), x)
    assert torch.equal(y1, y2.detach())  # forward unchanged
    (gs,) = torch.autograd.grad(x.sum() * 1.0, x)  # the skip's own share: ones
    assert torch.allclose(g2 - gs, 0.25 * (g1 - gs), atol=1e-6)  # the branch's share scaled
    assert residual_adds(net) == [net.add]


def test_sgm_attack_changes_the_gradient_and_resets_gamma(batch):
    pytest.importorskip("lb_fan")
    from lbcore.plugins import get_plugin_manager

    fan = get_plugin_manager().build("extractors", "fan:weights=none,width=16,landmarks=68,resolution=64")
    images, faces = batch
    adds = residual_adds(fan)
    assert adds, "FAN's residual blocks are marked"
    a = attack(images, faces, fan, preset("lb", sgm=0.3, steps=5))
    plain = attack(images, faces, fan, preset("lb", steps=5))
    assert not torch.equal(a.adversarial, plain.adversarial)
    # (a random FAN on random images moves little: Eq. 1 falls 136 -> 135.8, 68 -> 67.97 in 5 steps)
    assert bool((a.final_loss < a.clean_loss - 0.01).all()), a.final_loss
    assert all(m.gamma == 1.0 for m in adds)  # left as found


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_sgm_out_of_range_is_a_spec_error(bad):
    with pytest.raises(SpecError, match="sgm"):
        preset("lb", sgm=bad)


@pytest.mark.parametrize("deg", [10.0, -25.0])
def test_rotate_moves_the_boxes_with_the_image(deg):
    # a bright square (the "face") off-centre in a non-square image: after the turn, its box's
    # centre is where the bright pixels went, and the box keeps its size
    x = torch.zeros(1, 3, 90, 160)
    x[:, :, 20:36, 110:126] = 255.0
    faces = Faces(torch.tensor([[110.0, 20.0, 126.0, 36.0]]), torch.tensor([0]))
    out, moved = _rotate(x, faces, deg)
    ys, xs = torch.meshgrid(torch.arange(90.0), torch.arange(160.0), indexing="ij")

    def centre(img: torch.Tensor) -> torch.Tensor:
        m = img[0, 0]
        return torch.stack([(m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()])

    def box_centre(f: Faces) -> torch.Tensor:
        return (f.boxes[0, :2] + f.boxes[0, 2:]) / 2

    # the box moves exactly as the bright pixels do
    shift_pixels = centre(out) - centre(x)
    shift_box = box_centre(moved) - box_centre(faces)
    assert torch.allclose(shift_pixels, shift_box, atol=0.3), (shift_pixels, shift_box)
    assert float(shift_pixels.norm()) > 5
    b = moved.boxes[0]
    assert torch.allclose(b[2:] - b[:2], torch.tensor([16.0, 16.0]))
    assert float((out - x).abs().max()) > 100  # it did turn
    same, _ = _rotate(x, faces, 0.0)
    assert torch.allclose(same, x, atol=1e-3)


def test_rotate_attack_seeded_lowers_loss_and_refuses_box_jitter(tiny_extractor, batch):
    images, faces = batch
    a = attack(images, faces, tiny_extractor, preset("lb", rotate=10, seed=4))
    b = attack(images, faces, tiny_extractor, preset("lb", rotate=10, seed=4))
    assert torch.equal(a.adversarial, b.adversarial)
    assert bool((a.final_loss < a.clean_loss - 0.05).all()), a.final_loss
    assert float((a.adversarial - images).abs().max()) <= 15 + 1e-5
    with pytest.raises(SpecError, match="rotate"):
        preset("lb", rotate=10, box_jitter=0.1)
    with pytest.raises(SpecError, match="rotate"):
        preset("lb", rotate=-1)


def test_double_start_adds_a_moved_copy_of_the_face_within_eps_and_fades_out():
    # a dark vertical bar through the middle of a grey face box: the start holds a second,
    # fainter bar one tenth of the box to the right, and nothing beyond 0.8 box sizes
    x = torch.full((1, 3, 200, 200), 128.0)
    x[:, :, 60:140, 98:102] = 28.0
    faces = Faces(torch.tensor([[60.0, 60.0, 140.0, 140.0]]), torch.tensor([0]))
    out = _double_start(x, faces, 0.1, 0.0, 15.0)
    d = out - x
    assert float(d.abs().max()) <= 15
    assert torch.equal(out, out.round())
    row = d[0, 0, 100]
    assert float(row[106:110].min()) == -15  # the copy's bar: 8 px (0.1 x 80) to the right
    assert float(row[98:102].max()) == 15  # where the bar was, the copy is grey: brighter
    assert float(row[:30].abs().max()) == 0 and float(row[171:].abs().max()) == 0
    assert float(d[0, 0, :30].abs().max()) == 0
    # faded, not cut: the change along the bar falls off over the last fifth of the reach
    col = d[0, 0, :, 106]
    assert float(col[100]) == -15
    # (the bar ends at the box's edge; the reflected copy carries nothing past it)
    assert torch.equal(_double_start(x, faces, 0.0, 0.0, 15.0), x)  # no shift, no turn: no copy
    turned = _double_start(x, faces, 0.0, 30.0, 15.0)
    assert float((turned - x).abs().max()) == 15


def test_double_starts_the_attack_and_moves_an_extractor_before_any_step(tiny_extractor, batch):
    images, faces = batch
    cfg = preset("lb", double=0.1, steps=1, optimizer="ifgsm:alpha=0.001")
    assert budget_map(images, faces, cfg) is None  # the preset's plain L-inf ball
    start = _double_start(images, faces, 0.1, 0.0, 15.0)
    # one step of a vanishing size: the result is the start (rounded)
    a = attack(images, faces, tiny_extractor, cfg)
    # (inside the face boxes: what no crop sees goes back to the clean pixels at the end)
    inside = torch.zeros_like(images, dtype=torch.bool)
    for (x0, y0, x1, y1), i in zip(faces.boxes.int().tolist(), faces.image_index.tolist(), strict=True):
        inside[i, :, y0:y1, x0:x1] = True
    assert bool((start != images)[inside].any())
    assert float((a.adversarial - start)[inside].abs().max()) <= 1
    b = attack(images, faces, tiny_extractor, preset("lb", double=0.1, seed=2))
    assert float((b.adversarial - images).abs().max()) <= 15 + 1e-5
    assert bool((b.final_loss < b.clean_loss - 0.05).all()), b.final_loss
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(SpecError, match="double"):
            preset("lb", double=bad)
    with pytest.raises(SpecError, match="double_rotate"):
        preset("lb", double=0.1, double_rotate=120)



def test_hinge_drops_a_broken_members_pull_and_is_off_by_default(tiny_extractor, batch, monkeypatch):
    """``hinge``: a member whose landmarks already moved past it stops pulling on the face, so
    the ensemble's step is the other members' step; a hinge nothing reaches changes nothing."""
    from lb_test_tiny_model import tiny

    import lbcore.engine as engine

    images, faces = batch
    other = tiny(seed=7)  # a second, different member
    both = [tiny_extractor, other]
    plain = attack(images, faces, both, preset("lb", seed=1, steps=4))
    far = attack(images, faces, both, preset("lb", seed=1, steps=4, hinge=1e9))
    assert torch.equal(plain.adversarial, far.adversarial)
    # the first member reads as broken on every face: the step is the second member's alone
    real = engine._nme_to

    def moved(e, ref, out):
        n = real(e, ref, out)
        return torch.full_like(n, 1.0) if e is tiny_extractor else torch.zeros_like(n)

    monkeypatch.setattr(engine, "_nme_to", moved)
    hinged = attack(images, faces, both, preset("lb", seed=1, steps=4, hinge=0.1))
    alone = attack(images, faces, other, preset("lb", seed=1, steps=4))
    assert torch.equal(hinged.adversarial, alone.adversarial)
    assert not torch.equal(hinged.adversarial, plain.adversarial)
    # every member broken on every face: nothing pulls, the image stays clean (I-FGSM: no momentum)
    monkeypatch.setattr(engine, "_nme_to", lambda e, ref, out: torch.ones(len(faces)))
    none = attack(images, faces, both, preset("lb", seed=1, steps=3, optimizer="ifgsm:alpha=1", hinge=0.1))
    assert float((none.adversarial - images).abs().max()) <= 0.5  # (rounded to 8 bits)
    # one member: nobody to hand its share to, so the hinge is off (the attack goes on)
    single = attack(images, faces, tiny_extractor, preset("lb", seed=1, steps=3, optimizer="ifgsm:alpha=1", hinge=0.1))
    unhinged = attack(images, faces, tiny_extractor, preset("lb", seed=1, steps=3, optimizer="ifgsm:alpha=1"))
    assert torch.equal(single.adversarial, unhinged.adversarial)
    assert float((single.adversarial - images).abs().max()) > 0.5
    for bad in (-0.1, float("nan")):
        with pytest.raises(SpecError, match="hinge"):
            preset("lb", hinge=bad)
