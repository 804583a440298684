"""Fixtures for lb-fan's tests: reference key lists, random checkpoints, a reference crop."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def parse_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    """``name [d0, d1, ...]`` per line, ``#`` comments; returns ``{key: shape}`` in file order."""
    out: dict[str, tuple[int, ...]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        dims = shape.strip().strip("[]").strip()
        out[key] = tuple(int(d) for d in dims.split(",")) if dims else ()
    return out


def random_state_dict(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Values with the checkpoint's keys and shapes, scaled so a deep FAN stays finite
    (convolutions ~ N(0, 1/fan_in), BatchNorm statistics near identity)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000, dtype=torch.long)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        elif key.endswith(("running_var",)) or (key.endswith(".weight") and len(shape) == 1):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        else:  # biases, BN shifts and running means
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    return sd


@pytest.fixture(scope="session")
def key_list(shared: Path) -> Callable[[str], dict[str, tuple[int, ...]]]:
    """``key_list("fan_2dfan4_68")`` -> ``{key: shape}`` from ``shared/reference/checkpoint_keys``."""

    def load(name: str) -> dict[str, tuple[int, ...]]:
        return parse_key_list(shared / "reference" / "checkpoint_keys" / f"{name}.txt")

    return load


@pytest.fixture(scope="session")
def make_state_dict() -> Callable[..., dict[str, torch.Tensor]]:
    return random_state_dict


@pytest.fixture(autouse=True)
def _isolated_weights_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never pick up a real checkpoint from the user's cache or $LB_WEIGHTS_DIR in tests."""
    empty = tmp_path_factory.mktemp("no-weights")
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty))
