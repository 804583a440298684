"""Published-layout checkpoints load strictly through the factory, in every layout they occur in.

For each reference key list: a state dict with exactly those keys and shapes (random values) is
saved (a) plain like face-alignment's 2DFAN4 file, (b) as a pyhowfar training checkpoint
``{'epoch', 'netType', 'state_dict', 'best_acc', 'optimizer'}`` with DataParallel ``module.``
prefixes, (c) without ``num_batches_tracked`` (files saved before PyTorch 0.4.1). All three must
give the same network and the same landmarks.

The network is fully convolutional: these tests run it on 64x64 crops (16x16 heat-maps) so that
six forward passes of the 24M-parameter four-stack FAN stay cheap on a CPU. They are about
weights; the 256x256 geometry is pinned in test_geometry.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lb_fan.plugin import fan
from lbcore import Faces, WeightsError

CASES = {"fan_2dfan4_68": 68, "fan_pyhowfar_98": 98}


def _small(extractor):
    extractor.input_size = (64, 64)
    return extractor


def _save_layouts(sd: dict[str, torch.Tensor], folder: Path) -> dict[str, Path]:
    paths = {"plain": folder / "plain.pth.tar", "pyhowfar": folder / "pyhowfar.pth.tar", "legacy": folder / "legacy.pth"}
    torch.save(sd, paths["plain"])
    torch.save(
        {
            "epoch": 40,
            "netType": "fan",
            "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "best_acc": 0.0461,
            "optimizer": {"state": {}, "param_groups": [{"lr": 2.5e-4, "params": [0, 1, 2]}]},
        },
        paths["pyhowfar"],
    )
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, paths["legacy"])
    return paths


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, key_list, make_state_dict, tmp_path_factory):
    """One random checkpoint per key list, its three layouts, and the landmarks of layout (a)."""
    name = request.param
    landmarks = CASES[name]
    sd = make_state_dict(key_list(name), seed=len(name))
    paths = _save_layouts(sd, tmp_path_factory.mktemp(name))
    images = torch.rand(1, 3, 96, 112, generator=torch.Generator().manual_seed(1)) * 255
    faces = Faces(torch.tensor([[20.0, 18.0, 84.0, 90.0]]), torch.tensor([0]))
    reference = _small(fan(modules=4, landmarks=landmarks, weights=str(paths["plain"])))
    with torch.no_grad():
        ref_out = reference(images, faces)
    return {
        "extractor": reference,
        "name": name,
        "landmarks": landmarks,
        "state_dict": sd,
        "paths": paths,
        "inputs": (images, faces),
        "heatmaps": ref_out.heatmaps,
        "points": reference.decode(ref_out),
    }


def test_plain_layout_loads_the_file_values(checkpoint):
    net = checkpoint["extractor"].net
    own = net.state_dict()
    assert set(own) == set(checkpoint["state_dict"])
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(own[key], value), key
    assert not net.training
    pts = checkpoint["points"]
    assert pts.shape == (1, checkpoint["landmarks"], 2)
    assert checkpoint["heatmaps"].shape == (1, checkpoint["landmarks"], 16, 16)
    assert torch.isfinite(checkpoint["heatmaps"]).all()
    # Random weights still give a spread of peaks, so equal landmarks below mean something.
    assert pts[0].unique(dim=0).shape[0] > 3


@pytest.mark.parametrize("layout", ["pyhowfar", "legacy"])
def test_other_layouts_give_the_same_network_and_landmarks(checkpoint, layout):
    extractor = _small(fan(modules=4, landmarks=checkpoint["landmarks"], weights=str(checkpoint["paths"][layout])))
    own = extractor.net.state_dict()
    for key, value in checkpoint["state_dict"].items():
        if key.endswith("num_batches_tracked") and layout == "legacy":
            continue  # filled in by BatchNorm; unused in eval mode
        assert torch.equal(own[key], value), key
    with torch.no_grad():
        out = extractor(*checkpoint["inputs"])
    torch.testing.assert_close(out.heatmaps, checkpoint["heatmaps"])
    torch.testing.assert_close(extractor.decode(out), checkpoint["points"], rtol=0, atol=0)


def test_wrong_landmark_count_is_one_line_error_naming_the_layers(checkpoint):
    other = 98 if checkpoint["landmarks"] == 68 else 68
    with pytest.raises(WeightsError) as info:
        fan(modules=4, landmarks=other, weights=str(checkpoint["paths"]["plain"]))
    msg = str(info.value)
    assert "\n" not in msg
    assert str(checkpoint["paths"]["plain"]) in msg
    assert "l0.weight" in msg and "shape mismatch" in msg


def test_wrong_stack_count_lists_unexpected_keys(checkpoint):
    # A four-stack file into a two-stack network: m2.*, m3.* ... are unexpected.
    with pytest.raises(WeightsError, match=r"unexpected \d+ keys: .*m2\."):
        fan(modules=2, landmarks=checkpoint["landmarks"], weights=str(checkpoint["paths"]["plain"]))
