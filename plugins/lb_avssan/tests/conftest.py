"""Fixtures for the AVS-SAN tests: the reference key list and published-layout snapshots."""

from __future__ import annotations

import argparse
import ast
import math
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

KEY_LIST = "reference/checkpoint_keys/avssan_itn_cpm_98.txt"


@pytest.fixture(autouse=True)
def _one_thread():
    """Run these tests single-threaded: on a small, shared CPU, torch's intra-op threads spin
    against each other and a forward pass gets ~30x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_keys(shared: Path) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the original ITN-CPM (98 + 1 maps), from ``shared/``."""
    keys: dict[str, tuple[int, ...]] = {}
    for line in (shared / KEY_LIST).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        keys[name] = tuple(ast.literal_eval(shape))
    return keys


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes, scaled by fan-in so a forward pass stays finite."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        scale = 1.0 / math.sqrt(fan_in) if len(shape) > 1 else 0.01
        out[k] = torch.randn(shape, generator=g) * scale
    return out


def _fake_san_modules() -> tuple[type, dict[str, types.ModuleType]]:
    """A class that pickles as SAN's ``models.model_utils.ModelConfig``, and its modules."""

    class ModelConfig:
        def __init__(self, pts_num: int, num_stages: int, pretrained: bool, argmax: int) -> None:
            self.pts_num = pts_num
            self.num_stages = num_stages
            self.pretrained = pretrained
            self.argmax = argmax

    ModelConfig.__module__ = "models.model_utils"
    ModelConfig.__qualname__ = "ModelConfig"
    pkg = types.ModuleType("models")
    mod = types.ModuleType("models.model_utils")
    mod.ModelConfig = ModelConfig  # type: ignore[attr-defined]
    pkg.model_utils = mod  # type: ignore[attr-defined]
    return ModelConfig, {"models": pkg, "models.model_utils": mod}


def write_snapshot(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    *,
    legacy: bool,
    modelconfig: dict[str, Any] | None = None,
    **args: Any,
) -> Path:
    """Save ``state_dict`` in the layout of the published SAN snapshot.

    ``{'epoch', 'args', 'state_dict', 'optimizer'}`` with ``module.`` keys; ``args`` is a real
    ``argparse.Namespace`` holding an object whose class is named
    ``models.model_utils.ModelConfig``. The fake ``models`` package exists only while saving,
    so loading cannot import it.
    """
    config_cls, modules = _fake_san_modules()
    mc = {"pts_num": 99, "num_stages": 3, "pretrained": True, "argmax": 3, **(modelconfig or {})}
    namespace = argparse.Namespace(
        arch="itn_cpm", num_pts=98, pre_crop_expand=0.2, crop_height=128, crop_width=128,
        sigma=4.0, schedule=[30, 35, 40, 45], gammas=[0.5] * 4, gpu_ids=[0, 1], resume="",
        evaluation=True, modelconfig=config_cls(**mc),
    )  # fmt: skip
    for k, v in args.items():
        setattr(namespace, k, v)
    first = next(iter(state_dict))
    snapshot = {
        "epoch": 50,
        "args": namespace,
        "state_dict": {"module." + k: v for k, v in state_dict.items()},
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.zeros_like(state_dict[first])}},
            "param_groups": [{"lr": 5e-5, "momentum": 0.9, "weight_decay": 5e-4, "params": [0, 1]}],
        },
    }
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        torch.save(snapshot, path, _use_new_zipfile_serialization=not legacy)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return path


@pytest.fixture
def make_state_dict() -> Callable[..., dict[str, torch.Tensor]]:
    return random_state_dict


@pytest.fixture
def snapshot_writer() -> Callable[..., Path]:
    return write_snapshot


@pytest.fixture(scope="session")
def small_state_dict() -> dict[str, torch.Tensor]:
    """Random weights for ``ITNCPM(width_div=8)`` (cheap)."""
    from lb_avssan.model import ITNCPM

    shapes = {k: tuple(v.shape) for k, v in ITNCPM(width_div=8).state_dict().items()}
    return random_state_dict(shapes, seed=1)
