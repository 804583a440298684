"""Each update rule against a hand-computed step."""

from __future__ import annotations

import torch

from lbcore.optimizers import FGSM, IterativeFGSM, MomentumIterativeFGSM


def test_fgsm_step_is_eps_sign():
    x = torch.full((1, 1, 1, 3), 100.0)
    g = torch.tensor([[[[0.2, -3.0, 0.0]]]])
    out = FGSM().step(x, g, {}, eps=15.0)
    assert out.flatten().tolist() == [85.0, 115.0, 100.0]
    assert FGSM.max_steps == 1


def test_ifgsm_step():
    x = torch.full((1, 1, 1, 2), 10.0)
    g = torch.tensor([[[[1e-9, -5.0]]]])
    out = IterativeFGSM(alpha=2.0).step(x, g, {}, eps=15.0)
    assert out.flatten().tolist() == [8.0, 12.0]


def test_mifgsm_two_steps_by_hand():
    rule = MomentumIterativeFGSM(alpha=1.0, decay=0.5)
    x = torch.zeros(1, 1, 1, 3) + 50
    state = rule.init_state(x)
    g1 = torch.tensor([[[[1.0, -1.0, 2.0]]]])  # L1 = 4 -> g/|g| = [.25, -.25, .5]
    x1 = rule.step(x, g1, state, eps=15)
    assert torch.allclose(state["momentum"].flatten(), torch.tensor([0.25, -0.25, 0.5]))
    assert x1.flatten().tolist() == [49.0, 51.0, 49.0]
    g2 = torch.tensor([[[[-3.0, 0.0, -1.0]]]])  # L1 = 4 -> [-.75, 0, -.25]
    x2 = rule.step(x1, g2, state, eps=15)
    # m = 0.5*[.25,-.25,.5] + [-.75,0,-.25] = [-.625,-.125,0]
    assert torch.allclose(state["momentum"].flatten(), torch.tensor([-0.625, -0.125, 0.0]))
    assert x2.flatten().tolist() == [50.0, 52.0, 49.0]


def test_mifgsm_normalises_per_image():
    rule = MomentumIterativeFGSM()
    x = torch.zeros(2, 1, 1, 2)
    state = rule.init_state(x)
    g = torch.tensor([[[[1.0, 1.0]]], [[[100.0, 300.0]]]])
    rule.step(x, g, state, eps=15)
    m = state["momentum"]
    assert torch.allclose(m[0].flatten(), torch.tensor([0.5, 0.5]))
    assert torch.allclose(m[1].flatten(), torch.tensor([0.25, 0.75]))
