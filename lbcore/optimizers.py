"""Update rules of the attack (Eq. 2 and the baselines).

An update rule maps the current adversarial image and the gradient of the loss to the next
image *before* projection and clipping, which the engine does. All work per image on
``(B, 3, H, W)`` tensors in ``[0, 255]``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["UpdateRule", "FGSM", "IterativeFGSM", "MomentumIterativeFGSM"]


class UpdateRule:
    """Base class. ``max_steps`` caps the engine's step count (FGSM: 1)."""

    max_steps: int | None = None

    def init_state(self, x: torch.Tensor) -> dict[str, Any]:
        return {}

    def step(self, x: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], eps: float) -> torch.Tensor:
        raise NotImplementedError


class FGSM(UpdateRule):
    """Base1: one signed-gradient step of size epsilon (Goodfellow et al.)."""

    max_steps = 1

    def step(self, x: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], eps: float) -> torch.Tensor:
        return x - eps * grad.sign()


class IterativeFGSM(UpdateRule):
    """Base2: I-FGSM, ``x - alpha * sign(grad)`` each step (Kurakin et al.)."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def step(self, x: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], eps: float) -> torch.Tensor:
        return x - self.alpha * grad.sign()


class MomentumIterativeFGSM(UpdateRule):
    """LB: MI-FGSM, Eq. 2 - ``m = decay * m + g / ||g||_1`` (per image), ``x - alpha * sign(m)``."""

    def __init__(self, alpha: float = 1.0, decay: float = 0.5) -> None:
        self.alpha = alpha
        self.decay = decay

    def init_state(self, x: torch.Tensor) -> dict[str, Any]:
        return {"momentum": torch.zeros_like(x)}

    def step(self, x: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], eps: float) -> torch.Tensor:
        l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        m = self.decay * state["momentum"] + grad / l1
        state["momentum"] = m
        return x - self.alpha * m.sign()


class MomentumL2(UpdateRule):
    """MI-FGSM's momentum with a step proportional to it instead of its sign: ``m = decay * m +
    g / ||g||_1``, ``x - alpha * m / rms(m)`` (per image; the step's root mean square is
    ``alpha``). Under a similarity (SSIM / PSNR) budget the change then goes to the pixels the
    loss is most sensitive to, where the sign spreads it evenly over every pixel.

    ``gamma`` < 1 shrinks the step geometrically (``alpha * gamma^t`` at step ``t``): once the
    budget holds the change at its floor, large steps only swing around the best point there;
    smaller ones settle on it."""

    def __init__(self, alpha: float = 1.0, decay: float = 0.5, gamma: float = 1.0) -> None:
        self.alpha = alpha
        self.decay = decay
        self.gamma = gamma

    def init_state(self, x: torch.Tensor) -> dict[str, Any]:
        return {"momentum": torch.zeros_like(x), "t": 0}

    def step(self, x: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], eps: float) -> torch.Tensor:
        shape = (-1, *([1] * (grad.dim() - 1)))
        l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(shape)
        m = self.decay * state["momentum"] + grad / l1
        state["momentum"] = m
        nz = (m != 0).flatten(1).sum(1).clamp_min(1).view(shape)
        rms = (m.pow(2).flatten(1).sum(1).view(shape) / nz).sqrt().clamp_min(1e-30)
        t = int(state.get("t", 0))
        state["t"] = t + 1
        return x - self.alpha * self.gamma**t * m / rms
