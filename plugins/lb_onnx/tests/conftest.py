"""Fixtures for lb-onnx's tests: the project's own networks exported to ONNX, small graphs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def fan_demo():
    """lb-fan's bundled demonstration FAN (skips without lb-fan or its weights)."""
    pytest.importorskip("lb_fan")
    from lbcore.errors import WeightsError
    from lbcore.plugins import get_plugin_manager

    try:
        return get_plugin_manager().build("extractors", "fan-demo")
    except WeightsError as err:
        pytest.skip(f"fan-demo weights are not installed ({err})")


@pytest.fixture(scope="session")
def fan_demo_onnx(fan_demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lb_onnx.export import export_network

    return export_network(fan_demo, tmp_path_factory.mktemp("onnx") / "fan-demo.onnx")


@pytest.fixture(scope="session")
def regressor():
    """The example plugin's coordinate regressor (from the repository's examples/ folder)."""
    path = REPO / "examples" / "lb_example_regressor"
    if path.is_dir() and str(path) not in sys.path:
        sys.path.insert(0, str(path))
    model = pytest.importorskip("lb_example_regressor.model")
    return model.CoordinateRegressor(seed=3).eval()
