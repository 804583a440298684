"""Fixtures shared by the core's and every plugin's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


def shared_dir() -> Path:
    return Path(os.environ.get("LB_SHARED_DIR", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` (real faces, reference key lists); skips when absent (a fresh clone)."""
    d = shared_dir()
    if not d.is_dir():
        pytest.skip(f"{d} is absent: the real-data tests need the project's shared/ folder beside the checkout")
    return d


@pytest.fixture
def fresh_pm():
    from lbcore.testing import fresh_plugin_manager

    with fresh_plugin_manager() as pm:
        yield pm
