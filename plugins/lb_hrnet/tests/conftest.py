"""Fixtures for the lb_hrnet tests: the reference key list and small, lively extractors."""

from __future__ import annotations

import ast
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

KEY_LIST = "reference/checkpoint_keys/hrnetv2_w18_wflw_98.txt"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The test machine's few cores are shared: thousands of tiny ops (strict loading checks
    # every tensor) run far faster without intra-op threads fighting for them.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hrnet_key_list(shared: Path) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` of the original HRNetV2-W18 WFLW network, in module order."""
    rows = []
    for line in (shared / KEY_LIST).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        rows.append((key, tuple(ast.literal_eval(shape))))
    return rows


@pytest.fixture(scope="session")
def random_checkpoint(hrnet_key_list) -> OrderedDict:
    """A state dict with exactly the reference keys and shapes and random, sane values."""
    g = torch.Generator().manual_seed(1234)
    sd: OrderedDict = OrderedDict()
    for key, shape in hrnet_key_list:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 4:  # conv weights, scaled so activations stay O(1)
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1 + (1.0 if key.endswith(".weight") else 0.0)
    return sd


def _liven(extractor: torch.nn.Module, seed: int) -> torch.nn.Module:
    # The original's N(0, 0.001) initialisation makes near-constant heat-maps. He-initialised
    # convs with BatchNorm statistics calibrated on one random batch give O(1) heat-maps with
    # real structure (peaks, gradients) for the tests.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in extractor.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one batch sets the statistics
        extractor.train()
        extractor.forward_crops(torch.randn(2, 3, 128, 128, generator=g))
    return extractor.eval()


@pytest.fixture
def small_extractor():
    """A width-6 HRNet extractor with He-initialised random weights (eval mode)."""
    from lb_hrnet.plugin import hrnet

    return _liven(hrnet(weights="none", width=6), seed=0)


@pytest.fixture
def smooth_images():
    """Two smooth random RGB images ``(2, 3, 700, 900)`` in ``[0, 255]``."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 28, 36, generator=g) * 255
    return F.interpolate(low, size=(700, 900), mode="bicubic", align_corners=False).clamp(0, 255)
