"""Fixtures for lb-codecs' tests: a plugin manager with this plugin, natural test images, clips."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def codecs_pm():
    """A plugin manager holding the core built-ins and this plugin (no other entry points)."""
    import lb_codecs.plugin
    from lbcore.plugins import PluginManager

    pm = PluginManager(load_entry_points=False)
    pm.add_plugin(lb_codecs.plugin, name="codecs", distribution="lb-codecs", version="0.1.0")
    return pm


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A natural photograph (public domain, ships with scikit-image), 512x512 RGB uint8."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def moving_clip(astronaut: np.ndarray) -> np.ndarray:
    """12 frames, 95x127 (odd sizes), of a photo panning right with a brightness ramp per frame,
    so that each frame is distinguishable from its neighbours: ``(12, 95, 127, 3)`` uint8."""
    base = astronaut[40:135, 160:287].astype(np.int16)
    frames = [np.clip(np.roll(base, 3 * i, axis=1) + 6 * i - 30, 0, 255).astype(np.uint8) for i in range(12)]
    return np.stack(frames)
