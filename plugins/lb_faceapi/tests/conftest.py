"""Fixtures for lb-faceapi's tests: the face-api.js weight files (skip when absent), sample faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lbcore.errors import WeightsError
from lbcore.weights import WeightsFile, resolve_weights

FACES68 = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces68"
if not FACES68.is_dir():
    FACES68 = Path("/work/shared/data/faces68")


def _model(entry: WeightsFile) -> Path:
    try:
        return resolve_weights(entry)
    except WeightsError as err:
        pytest.skip(f"face-api.js weight files absent (run scripts/setup.sh or python -m lb_faceapi.fetch): {err}")


@pytest.fixture(scope="session")
def full_path() -> Path:
    from lb_faceapi.plugin import FULL_WEIGHTS

    return _model(FULL_WEIGHTS)


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from lb_faceapi.plugin import TINY_WEIGHTS

    return _model(TINY_WEIGHTS)


@pytest.fixture(scope="session")
def faces68() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, RGB uint8 image, (68, 2) annotation)`` for each faces68 photo."""
    if not FACES68.is_dir():
        pytest.skip(f"shared sample faces absent ({FACES68})")
    import cv2

    from lbcore.io.annotations import read_pts

    out = []
    for pts in sorted(FACES68.glob("*.pts")):
        img = next(p for p in FACES68.glob(pts.stem + ".*") if p.suffix != ".pts")
        bgr = cv2.imread(str(img), cv2.IMREAD_COLOR)
        out.append((img.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.asarray(read_pts(pts), dtype=np.float64)))
    return out
