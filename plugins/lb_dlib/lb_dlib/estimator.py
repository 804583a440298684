"""Score-based estimation of a vector-Jacobian product ``J^T g`` from queries (no gradients).

The estimator is NES with antithetic Gaussian sampling (Wierstra et al. 2014; as a black-box
attack gradient, Ilyas et al. 2018, "Black-box adversarial attacks with limited queries and
information"): for a black box ``F`` (image -> landmarks) and a cotangent ``g``, the scalar
``f(x) = <g, F(x)>`` has the Gaussian-smoothed gradient

    grad f_sigma(x) = E_u[ (f(x + sigma u) - f(x - sigma u)) / (2 sigma) * u ],   u ~ N(0, I),

estimated with ``m`` antithetic pairs, ``2 m`` queries. The perturbations live in a small
subspace where the black box actually looks:

* a *region* of the image (the face's neighbourhood) - pixels elsewhere get zero;
* *grey*: one value per pixel added to the three channels alike (right for dlib, which reads
  the mean of R, G and B); the estimate of ``sum_c df/dx_c`` is shared out as a third per channel;
* *tiles*: one value per ``tile x tile`` block (Ilyas et al.'s tiling trick); a tile's estimate
  (of the sum of the gradient over its pixels) is shared out evenly over them.

The result is the (smoothed) gradient projected onto that subspace, in the scale of a true
gradient, so it can be summed with the exact gradients of other extractors in an ensemble.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["nes_vjp"]


def nes_vjp(
    query: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int, int],
    g: torch.Tensor,
    samples: int,
    sigma: float,
    generator: torch.Generator,
    tile: int = 1,
    grey: bool = True,
) -> torch.Tensor:
    """Estimate ``J^T g`` of a black box at a point by antithetic NES.

    Args:
        query: maps a perturbation ``delta`` ``(C, h, w)`` (0..255 scale) of the region to the
            black box's output at ``x + delta`` (the caller owns ``x``, the region and clipping);
            called ``samples`` times.
        shape: ``(C, h, w)`` of the perturbed region.
        g: the cotangent, shaped like one output of ``query``.
        samples: number of queries; rounded up to an even number (antithetic pairs).
        sigma: standard deviation of the Gaussian perturbation (0..255 scale).
        generator: the random source (CPU).
        tile: side of the square blocks sharing one perturbation value.
        grey: one perturbation per pixel for all channels (else one per channel).

    Returns:
        ``(C, h, w)`` estimate of the gradient of ``<g, query(delta)>`` at ``delta = 0``.
    """
    c, rh, rw = shape
    if samples <= 0 or rh <= 0 or rw <= 0 or not bool(g.abs().sum() > 0):
        return torch.zeros(shape)
    pairs = (samples + 1) // 2
    th, tw = -(-rh // tile), -(-rw // tile)
    ch = 1 if grey else c
    u = torch.randn((pairs, ch, th, tw), generator=generator)
    g = g.float().cpu()
    diff = torch.empty(pairs)
    for i in range(pairs):  # one pair at a time: memory stays at a few regions
        d = _blocks(sigma * u[i], tile, rh, rw)
        if grey:
            d = d.expand(c, rh, rw)
        diff[i] = ((query(d).float() - query(-d).float()) * g).sum()  # f(x + sigma u) - f(x - sigma u)
    est = (diff.view(pairs, 1, 1, 1) * u).sum(0) / (2.0 * sigma * pairs)  # (ch, th, tw): block sums
    # share each block's estimate over its pixels (and over the channels, for grey)
    cover = F.pad(torch.ones(1, 1, rh, rw), (0, tw * tile - rw, 0, th * tile - rh))
    count = F.avg_pool2d(cover, tile, stride=tile, divisor_override=1)[0]  # pixels per block
    per_px = est / count.clamp_min(1)
    if grey:
        per_px = per_px / c
    return _blocks(per_px, tile, rh, rw).expand(c, rh, rw).clone()


def _blocks(v: torch.Tensor, tile: int, h: int, w: int) -> torch.Tensor:
    """``(C, th, tw)`` block values -> ``(C, h, w)`` pixels (each value over its ``tile x tile`` block)."""
    if tile == 1:
        return v[:, :h, :w]
    c, th, tw = v.shape
    return v[:, :, None, :, None].expand(c, th, tile, tw, tile).reshape(c, th * tile, tw * tile)[:, :h, :w]
