"""The NES estimator of J^T g against exact gradients of smooth toy black boxes (no dlib needed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lb_dlib.estimator import nes_vjp


def _toy(shape: tuple[int, int, int], seed: int = 0):
    """A smooth black box: 5 "landmarks" (x, y), each a sine of a random projection of the
    region's grey values (mean of the channels, like dlib) plus a little of the red channel."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    proj = torch.randn((10, h * w), generator=g) / (h * w) ** 0.5
    red = torch.randn((10, h * w), generator=g) / (h * w) ** 0.5
    x0 = 255 * torch.rand(shape, generator=g)

    def f(delta: torch.Tensor) -> torch.Tensor:
        x = x0 + delta
        grey = x.mean(0).flatten() / 40.0
        return (torch.sin(proj @ grey) + 0.2 * torch.tanh(red @ (x[0].flatten() / 40.0))).view(5, 2)

    return f


def _true_vjp(f, shape, g):
    d = torch.zeros(shape, requires_grad=True)
    (grad,) = torch.autograd.grad((f(d) * g).sum(), d)
    return grad


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_nes_matches_the_true_vjp_of_a_smooth_function() -> None:
    shape = (3, 6, 6)
    f = _toy(shape)
    g = torch.randn((5, 2), generator=torch.Generator().manual_seed(1))
    true = _true_vjp(f, shape, g)
    est = nes_vjp(f, shape, g, samples=4000, sigma=1.0, generator=torch.Generator().manual_seed(2), grey=False)
    assert est.shape == shape
    assert _cos(est, true) > 0.9
    # the right scale too (it is summed with exact gradients in ensembles)
    assert 0.7 < float(est.norm() / true.norm()) < 1.4


def test_grey_and_tiles_estimate_the_projected_gradient() -> None:
    shape = (3, 8, 8)
    f = _toy(shape, seed=3)
    g = torch.randn((5, 2), generator=torch.Generator().manual_seed(4))
    true = _true_vjp(f, shape, g)
    # projection onto "same value for R, G, B, constant over 2x2 blocks"
    s = true.sum(0, keepdim=True)
    blocks = F.avg_pool2d(s[None], 2)[0] / 3.0
    projected = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2).expand(3, 8, 8)
    est = nes_vjp(f, shape, g, samples=2000, sigma=1.0, generator=torch.Generator().manual_seed(5), tile=2)
    assert _cos(est, projected) > 0.9
    assert bool((est[0] == est[1]).all() and (est[:, 0, 0] == est[:, 1, 1]).all())  # grey, one value per block
    # a random direction is nowhere near (the test can fail)
    assert abs(_cos(torch.randn(shape, generator=torch.Generator().manual_seed(6)), projected)) < 0.3


def test_queries_are_counted_and_paired() -> None:
    shape = (3, 4, 4)
    f = _toy(shape)
    calls: list[torch.Tensor] = []

    def counted(delta: torch.Tensor) -> torch.Tensor:
        calls.append(delta.clone())
        return f(delta)

    g = torch.ones((5, 2))
    nes_vjp(counted, shape, g, samples=7, sigma=2.0, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 8  # rounded up to 4 antithetic pairs
    for a, b in zip(calls[::2], calls[1::2], strict=True):
        assert torch.equal(a, -b)
    calls.clear()
    out = nes_vjp(counted, shape, torch.zeros((5, 2)), samples=8, sigma=2.0, generator=torch.Generator())
    assert not calls and not bool(out.any())  # a zero cotangent costs no queries
