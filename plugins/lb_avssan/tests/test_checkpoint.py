"""Loading the published snapshot layout safely, and refusing everything else."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lb_avssan.extractor import AVSSANExtractor
from lb_avssan.model import ITNCPM
from lb_avssan.plugin import avssan
from lbcore import Faces
from lbcore.errors import WeightsError


def test_model_keys_match_the_published_checkpoint(reference_keys):
    net = ITNCPM()
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert own == reference_keys
    assert list(own) == list(reference_keys)
    assert sum(p.numel() for p in net.parameters()) == 35_018_095
    # the cheap variant keeps every name
    assert list(ITNCPM(width_div=8).state_dict()) == list(reference_keys)


def test_published_layout_loads_from_legacy_and_zip(tmp_path, reference_keys, snapshot_writer, make_state_dict):
    """Full size: both formats load strictly to the same weights; one (slow) forward pass."""
    import zipfile

    sd = make_state_dict(reference_keys, seed=3)
    legacy = snapshot_writer(tmp_path / "legacy.pth.tar", sd, legacy=True)
    zipped = snapshot_writer(tmp_path / "zip.pth.tar", sd, legacy=False)
    assert not zipfile.is_zipfile(legacy) and zipfile.is_zipfile(zipped)
    extractors = [avssan(weights=str(path)) for path in (legacy, zipped)]
    for ext in extractors:
        assert isinstance(ext, AVSSANExtractor)
        got = ext.net.state_dict()
        assert all(torch.equal(got[k], sd[k]) for k in sd)
    del sd
    images = torch.rand(1, 3, 90, 80) * 255
    faces = Faces(torch.tensor([[15.0, 20.0, 65.0, 75.0]]), torch.tensor([0]))
    with torch.no_grad():
        out = extractors[0](images, faces)
    assert out.heatmaps.shape == (1, 98, 16, 16)
    assert [s.shape[1] for s in out.extra["stages"]] == [99] * 4
    assert torch.isfinite(out.heatmaps).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_legacy_and_zip_give_identical_outputs(tmp_path, small_state_dict, snapshot_writer, seed):
    legacy = snapshot_writer(tmp_path / "legacy.pth.tar", small_state_dict, legacy=True)
    zipped = snapshot_writer(tmp_path / "zip.pth.tar", small_state_dict, legacy=False)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 90, 80, generator=g) * 255
    faces = Faces(torch.tensor([[15.0, 20.0, 65.0, 75.0], [5.0, 0.0, 60.0, 50.0]]), torch.tensor([0, 1]))
    with torch.no_grad():
        a, b = (avssan(weights=str(p), width_div=8)(images, faces) for p in (legacy, zipped))
    assert torch.equal(a.heatmaps, b.heatmaps)
    assert a.heatmaps.abs().sum() > 0


def test_snapshot_settings_are_used(tmp_path, small_state_dict, snapshot_writer):
    path = snapshot_writer(
        tmp_path / "s.pth.tar", small_state_dict, legacy=True, modelconfig={"argmax": 2}, pre_crop_expand=0.3
    )
    ext = avssan(weights=str(path), width_div=8)
    assert ext.softargmax_radius == 2
    assert ext.expand_ratio == pytest.approx(0.3)
    assert ext.input_size == (128, 128)


@pytest.mark.parametrize(
    ("modelconfig", "args", "message"),
    [
        ({"pts_num": 69}, {}, "pts_num=69"),
        ({"num_stages": 2}, {}, "num_stages=2"),
        ({}, {"arch": "cpm_vgg16"}, "'cpm_vgg16'"),
        ({}, {"pre_crop_expand": -1.0}, "pre_crop_expand"),
    ],
)
def test_snapshot_of_another_model_is_refused(tmp_path, small_state_dict, snapshot_writer, modelconfig, args, message):
    path = snapshot_writer(tmp_path / "o.pth.tar", small_state_dict, legacy=True, modelconfig=modelconfig, **args)
    with pytest.raises(WeightsError, match=message) as info:
        avssan(weights=str(path), width_div=8)
    assert str(path) in str(info.value)


def test_plain_state_dict_and_width_mismatch(tmp_path, small_state_dict):
    plain = tmp_path / "plain.pth"
    torch.save(small_state_dict, plain)
    ext = avssan(weights=str(plain), width_div=8)
    assert torch.equal(ext.net.stage3[16].bias, small_state_dict["stage3.16.bias"])
    with pytest.raises(WeightsError, match="shape mismatch") as info:
        avssan(weights=str(plain), width_div=4)
    assert str(plain) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(WeightsError, match="not found") as info:
        avssan(weights=str(tmp_path / "absent.pth.tar"), width_div=8)
    assert "absent.pth.tar" in str(info.value)


class _Hostile:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["legacy", "zip", "raw-pickle"])
def test_hostile_pickle_is_refused(tmp_path, small_state_dict, layout):
    marker = tmp_path / "pwned"
    path = tmp_path / f"hostile-{layout}.pth.tar"
    payload = {"epoch": 1, "args": _Hostile(marker), "state_dict": {"module." + k: v for k, v in small_state_dict.items()}}
    if layout == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=layout == "zip")
    with pytest.raises(WeightsError) as info:
        avssan(weights=str(path), width_div=8)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert not marker.exists()


def test_other_classes_beside_the_allowed_two_are_refused(tmp_path, small_state_dict, snapshot_writer):
    # a harmless-looking but not allow-listed class inside args is still refused
    path = snapshot_writer(tmp_path / "p.pth.tar", small_state_dict, legacy=True, save_path=Path("/tmp/x"))
    with pytest.raises(WeightsError, match="Path") as info:
        avssan(weights=str(path), width_div=8)
    assert str(path) in str(info.value)
