"""The installed plugin: registration through entry points, cheap import, weights resolution."""

from __future__ import annotations

import subprocess
import sys

import importlib_metadata
import pytest
import torch

import lb_fan.plugin as plugin
from lbcore import WeightsError, WeightsFile
from lbcore.errors import SpecError

PUBLISHED_SHA = "11f355bf0693120222f5955ce3f9dc8fb5763ebb30a47d7906e509490d32e4aa"


def test_installed_distribution_exposes_the_entry_point():
    dist = importlib_metadata.distribution("lb-fan")
    assert dist.version == "0.1.0"
    eps = [ep for ep in dist.entry_points if ep.group == "lbcore"]
    assert [(ep.name, ep.value) for ep in eps] == [("fan", "lb_fan.plugin")]


def test_registered_through_a_fresh_plugin_manager(fresh_pm):
    comp = fresh_pm.get("extractors", "fan")
    assert comp.distribution == "lb-fan"
    assert comp.factory is plugin.fan
    assert "FAN" in comp.summary
    names = {w.name: w for w in comp.metadata["weights"]}
    w = names["2dfan4"]
    assert w.filename == "2DFAN4-11f355bf06.pth.tar"
    assert w.url == "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
    assert w.sha256 == PUBLISHED_SHA
    assert w.fits == "fan:modules=4,landmarks=68"
    assert w.licence == "BSD-3-Clause"
    assert "No WFLW" in comp.metadata["note"]
    report = {d["name"]: d for d in fresh_pm.plugin_report()}
    assert report["lb-fan"]["components"]["extractors"] == ["fan", "fan-demo"]
    demo = fresh_pm.get("extractors", "fan-demo")
    assert demo.metadata["demo"] is True
    assert [w.name for w in demo.metadata["demo_weights"]] == ["fan-demo"]
    assert demo.metadata["demo_weights"][0].fits == "fan:modules=1,landmarks=68,width=32,resolution=128"


def test_spec_keys_are_the_factory_parameters(fresh_pm):
    ext = fresh_pm.build("extractors", "fan:weights=none,modules=2,landmarks=68,width=16,all_stacks=true,truncate=yes,normalise=symmetric")
    assert type(ext).__name__ == "FANExtractor"
    assert (ext.net.num_modules, ext.net.num_landmarks, ext.net.width) == (2, 68, 16)
    assert ext.all_stacks and ext.truncate and ext.normalise_mode == "symmetric"
    assert not ext.training
    with pytest.raises(SpecError, match="normalise"):
        fresh_pm.build("extractors", "fan:weights=none,normalise=imagenet")
    with pytest.raises(SpecError, match="width"):
        fresh_pm.build("extractors", "fan:weights=none,width=12")


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, lb_fan.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- weights resolution -------------------------------------------------------------------


def test_default_without_a_published_wflw_fan_is_a_one_line_error(fresh_pm):
    with pytest.raises(WeightsError) as info:
        fresh_pm.build("extractors", "fan")
    msg = str(info.value)
    assert "\n" not in msg
    assert "fan:modules=1,landmarks=98" in msg and "no WFLW FAN" in msg and "weights=none" in msg


def test_default_2dfan4_missing_says_where_it_is_published(fresh_pm):
    for spec in ("fan:modules=4,landmarks=68", "fan:modules=4,landmarks=68,weights=2dfan4"):
        with pytest.raises(WeightsError) as info:
            fresh_pm.build("extractors", spec)
        msg = str(info.value)
        assert "\n" not in msg
        assert "2DFAN4-11f355bf06.pth.tar" in msg and "adrianbulat.com" in msg


def test_published_file_with_wrong_sha256_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "2DFAN4-11f355bf06.pth.tar").write_bytes(b"not the published file")
    with pytest.raises(WeightsError, match="sha256"):
        plugin.fan(modules=4, landmarks=68)


def test_auto_finds_the_published_file_through_resolve_weights(tmp_path, monkeypatch):
    """With a matching sha256 the found file is loaded (the checksum is swapped for this file's)."""
    from lb_fan.model import FAN
    from lbcore.weights import sha256sum

    path = tmp_path / "2DFAN4-11f355bf06.pth.tar"
    net = FAN(num_modules=4, num_landmarks=68)
    with torch.no_grad():
        net.l3.bias.fill_(0.25)
    torch.save(net.state_dict(), path)
    entry = plugin.WEIGHTS[0]
    fake = WeightsFile(**{**{f: getattr(entry, f) for f in ("name", "filename", "fits", "url", "licence")}, "sha256": sha256sum(path)})
    monkeypatch.setattr(plugin, "WEIGHTS", [fake])
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    ext = plugin.fan(modules=4, landmarks=68)
    assert torch.all(ext.net.l3.bias == 0.25)


def test_weights_none_is_random_init_and_explicit_path_must_exist(tmp_path):
    a = plugin.fan(weights="none", width=16)
    assert a.net.width == 16
    with pytest.raises(WeightsError, match="not found"):
        plugin.fan(weights=str(tmp_path / "missing.pth"), width=16)


def test_python_none_means_auto():
    with pytest.raises(WeightsError, match="no WFLW FAN"):
        plugin.fan(weights=None, width=16)  # type: ignore[arg-type]


def test_demo_weights_fill_in_when_nothing_published_fits(tmp_path, monkeypatch):
    from lb_fan.model import FAN

    net = FAN(num_modules=1, num_landmarks=98, width=16)
    with torch.no_grad():
        net.l0.bias.fill_(-0.5)
    path = tmp_path / "demo_fan.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    demo = WeightsFile(name="demo-fan", filename="demo_fan.pth", fits="fan:modules=1,landmarks=98,width=16", bundled=str(path))
    monkeypatch.setattr(plugin, "DEMO_WEIGHTS", [demo])
    ext = plugin.fan(width=16)
    assert torch.all(ext.net.l0.bias == -0.5)
    by_name = plugin.fan(width=16, weights="demo-fan")
    assert torch.all(by_name.net.l0.bias == -0.5)
    # A different architecture does not fit the demo entry.
    with pytest.raises(WeightsError, match="no WFLW FAN"):
        plugin.fan(width=32)
    # `fan` lists the published files; demonstration files are listed by `fan-demo`.
    seen: dict = {}
    plugin.register_extractors(lambda name, factory, **meta: seen.setdefault(name, meta))
    assert [w.name for w in seen["fan"]["weights"]] == ["2dfan4"]
    assert [w.name for w in seen["fan-demo"]["demo_weights"]] == ["demo-fan"]


def test_published_entry_wins_over_a_demo_entry_for_the_same_architecture(tmp_path, monkeypatch):
    demo = WeightsFile(name="demo-fan4", filename="x.pth", fits="fan:modules=4,landmarks=68", bundled=str(tmp_path / "absent.pth"))
    monkeypatch.setattr(plugin, "DEMO_WEIGHTS", [demo])
    # Neither file present: the error is the published file's (where to download it).
    with pytest.raises(WeightsError, match="adrianbulat.com"):
        plugin.fan(modules=4, landmarks=68)
