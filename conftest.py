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


@pytest.fixture(scope="session")
def trained_fan(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    """A small FAN (68 points, width 32, 128 px) trained once per session on ../shared's faces.

    Trained with :func:`lbcore.apps.training.train` on the dlib_faces XML faces (dlib pseudo labels)
    and the four faces68 photos; starts from the embedded demonstration weights when they are
    installed (``weights=auto``); skips without them. ``LB_TRAIN_TEST_STEPS`` sets the number of
    optimiser steps (default 60). Returns ``(extractor, samples, checkpoint_path)``.
    """
    torch = pytest.importorskip("torch")
    from lbcore.apps.training import PAPER_RECIPES, Augment, prepare_samples, train
    from lbcore.errors import WeightsError
    from lbcore.io.annotations import load_annotations
    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if "fan" not in pm.components("extractors"):
        pytest.skip("the lb_fan plugin is not installed")
    spec = "fan:modules=1,landmarks=68,width=32,resolution=128"  # the fan-demo architecture
    try:
        extractor = pm.build("extractors", "fan-demo")
    except WeightsError:
        # from random weights a few CPU minutes do not fit these faces; the short run
        # fine-tunes the embedded demonstration model
        pytest.skip(f"no embedded demonstration weights for {spec} (scripts/train_default_model.py makes them)")
    data = shared / "data"
    records = [
        *load_annotations(data / "dlib_faces" / "training_with_face_landmarks.xml", "dlib-xml"),
        *load_annotations(data / "dlib_faces" / "testing_with_face_landmarks.xml", "dlib-xml"),
        *load_annotations(data / "faces68", "pts"),
    ]
    samples = prepare_samples(records)
    recipe = PAPER_RECIPES["generic"].replace(
        lr=1e-3, sigma=1.5, fg_weight=10.0, batch_size=8, epochs=1,
        augment=Augment(scale=0.1, rotation=10.0, translation=0.03, flip=0.0, colour=0.2, grey=0.0, blur=0.0),
    )
    steps = int(os.environ.get("LB_TRAIN_TEST_STEPS", "60"))
    out = tmp_path_factory.mktemp("trained_fan") / "fan-test.pth"
    torch.manual_seed(0)
    train(extractor, samples, recipe=recipe, out=out, spec=spec, seed=0, steps_per_epoch=steps, progress=False)
    return extractor.eval(), samples, out
