"""Perceptual budget, part two: the luma weighting of each step, and the soft mask on videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbcore.attacks import AttackConfig
from lbcore.engine import attack
from lbcore.metrics import edge_band
from lbcore.types import Faces


def _textured(seed: int = 0, h: int = 96, w: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((1, 3, h, w), generator=g) * 160 + 48).round()


FACES = Faces.from_lists([[[16.0, 12.0, 112.0, 84.0]]])


@pytest.fixture
def ext(tiny_plugin):
    from lb_test_tiny_model import tiny  # installed by the tiny_plugin fixture

    return tiny()


def test_luma_weight_scales_each_step_not_the_whole_change(ext):
    """I-FGSM steps of 1: a step's luma (channel mean) is at most 1, so with ``luma_weight=2``
    three steps move the luma by at most 3 * 2 (weighting the whole change every step would
    compound to 14); ``luma_weight=0`` leaves a pure colour change (luma 0 up to rounding)."""
    x = _textured()
    base = {"optimizer": "ifgsm:alpha=1", "steps": 3, "eps": 60.0}
    adv = attack(x, FACES, ext, AttackConfig(**base, luma_weight=2.0)).adversarial
    luma = (adv - x).mean(1)
    assert float(luma.abs().max()) <= 6.0 + 0.5
    assert float(luma.abs().max()) > 3.5  # the weight did act (unweighted: at most 3)
    adv0 = attack(x, FACES, ext, AttackConfig(**base, luma_weight=0.0)).adversarial
    assert float((adv0 - x).abs().max()) >= 1
    assert float((adv0 - x).mean(1).abs().max()) <= 0.5 + 1e-6


def test_video_output_has_no_edge(tiny_plugin, tmp_path):
    """A protected video (lossless FFV1) goes through the same soft face mask as photos: in
    every frame the outermost 4 pixels of the changed region move by under one grey level on
    average, and nothing changes far from the face."""
    from lbcore.apps.protection import ProtectOptions, protect
    from lbcore.io import VideoWriter, iter_video_frames

    frames = [_textured(seed=i, h=120, w=160)[0].permute(1, 2, 0).numpy().astype(np.uint8) for i in range(3)]
    src = tmp_path / "clip.mkv"
    with VideoWriter(src, 10.0, codec="ffv1") as w:
        for f in frames:
            w.write(f)
    box = (40.0, 30.0, 120.0, 90.0)
    opts = ProtectOptions(extractors=("tiny",), boxes=(box,), steps=4, batch_size=3, check_compression=False,
                          device="cpu", min_face=20)
    rep = protect([src], tmp_path / "o", opts)["files"][0]
    assert rep["status"] == "protected" and rep["frames"] == 3
    out = list(iter_video_frames(tmp_path / "o" / "clip.mkv"))
    assert len(out) == 3
    for clean, adv in zip(frames, out, strict=True):
        d = np.abs(adv.astype(int) - clean.astype(int)).max(axis=2)
        assert d.max() > 0
        assert d[:, :16].max() == 0 and d[:, -16:].max() == 0  # the ellipse is 1.3x the box
        band = edge_band(clean, adv)
        assert band is not None and band < 1.0


def test_l2_update_rule_anneals_its_step():
    """``mifgsm-l2:gamma=0.5``: the RMS of step t (over the pixels it changes) is alpha * 0.5^t."""
    from lbcore.errors import SpecError
    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    rule = pm.build("optimizers", "mifgsm-l2:alpha=2,gamma=0.5")
    x = torch.zeros(1, 3, 8, 8)
    state = rule.init_state(x)
    g = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in range(4):
        step = rule.step(x, g, state, 16.0) - x
        assert float(step.pow(2).mean().sqrt()) == pytest.approx(2 * 0.5**t, rel=1e-5)
    with pytest.raises(SpecError, match="gamma"):
        pm.build("optimizers", "mifgsm-l2:gamma=1.5")
