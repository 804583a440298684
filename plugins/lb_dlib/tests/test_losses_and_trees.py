"""The landmark-target loss and the model decoder's refusals (no dlib model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lbcore.errors import WeightsError
from lbcore.types import ExtractorOutput


def _face() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    pts = 100 + 50 * torch.rand((1, 68, 2), generator=g)
    pts[0, 36] = torch.tensor([100.0, 120.0])
    pts[0, 45] = torch.tensor([140.0, 120.0])  # eye corners 40 px apart
    return pts


def test_landmark_target_is_zero_at_the_target_and_pulls_towards_it() -> None:
    from lb_dlib.losses import LandmarkTargetLoss

    c = _face()
    loss = LandmarkTargetLoss(dx=0.5, dy=0.0, scale=1.0)
    at_target = c + torch.tensor([20.0, 0.0])  # half the eye-corner distance to the right
    assert float(loss(ExtractorOutput(landmarks=c), ExtractorOutput(landmarks=at_target))) == pytest.approx(0.0, abs=1e-5)
    # clean landmarks are half an eye-corner distance from the target
    assert float(loss(ExtractorOutput(landmarks=c), ExtractorOutput(landmarks=c))) == pytest.approx(0.5, abs=1e-5)
    a = c.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(ExtractorOutput(landmarks=c), ExtractorOutput(landmarks=a)).sum(), a)
    assert bool((g[..., 0] < 0).all())  # minimising moves every point right (x grows)
    scaled = LandmarkTargetLoss(dx=0.0, scale=1.5)
    centre = c.mean(1, keepdim=True)
    assert float(scaled(ExtractorOutput(landmarks=c), ExtractorOutput(landmarks=centre + 1.5 * (c - centre)))) \
        == pytest.approx(0.0, abs=1e-5)


def test_landmark_target_needs_landmarks() -> None:
    from lb_dlib.losses import LandmarkTargetLoss

    with pytest.raises(ValueError, match="landmarks"):
        LandmarkTargetLoss()(ExtractorOutput(heatmaps=torch.zeros(1, 68, 4, 4)), ExtractorOutput())


@pytest.mark.parametrize("data", [b"", b"\x01\x02", b"\x01\x01\x81\x88\x81\x01\x03\x4d\x38", b"\x05\x01"])
def test_decoder_refuses_what_is_not_a_shape_predictor(tmp_path: Path, data: bytes) -> None:
    from lb_dlib.trees import read_model

    f = tmp_path / "x.dat"
    f.write_bytes(data)
    with pytest.raises(WeightsError, match="x.dat") as err:
        read_model(f, cache=False)
    assert "\n" not in str(err.value)
