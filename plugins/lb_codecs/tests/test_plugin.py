"""Registration, spec parsing, flags and error messages of lb-codecs' stages."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lbcore.errors import LBError, SpecError

ALL = ["jpeg", "mpeg4", "h264", "c", "c2", "resize", "blur", "noise", "diffjpeg",
       "st-jpeg", "st-mpeg4", "st-h264", "st-c", "st-c2"]


def test_importing_the_plugin_is_light():
    code = ("import sys, lb_codecs.plugin, lb_codecs; "
            "print(sorted(m for m in ('torch', 'av', 'cv2', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_entry_point_is_installed():
    import importlib_metadata

    eps = [ep for ep in importlib_metadata.entry_points(group="lbcore") if ep.name == "codecs"]
    assert eps and eps[0].value == "lb_codecs.plugin"
    assert eps[0].dist.name == "lb-codecs" and eps[0].dist.version == "0.1.0"


def test_all_stages_registered(codecs_pm):
    comps = codecs_pm.components("degradations")
    assert set(ALL) <= set(comps)
    assert all(comps[n].distribution == "lb-codecs" for n in ALL)


@pytest.mark.parametrize(
    ("spec", "differentiable", "stochastic", "video"),
    [
        ("jpeg:quality=50", False, False, False),
        ("mpeg4:qscale=5", False, False, True),
        ("h264:crf=28,preset=fast", False, False, True),
        ("c", False, False, True),
        ("c2", False, False, True),
        ("resize:scale=0.5", True, False, False),
        ("blur:sigma=1.5", True, False, False),
        ("noise:std=3", True, True, False),
        ("diffjpeg:quality=50", True, False, False),
        ("diffjpeg:quality_range=50:95", True, True, False),
        ("diffjpeg:min_quality=60,max_quality=90,rounding=cubic", True, True, False),
        ("st-jpeg:quality=75", True, False, False),
        ("st-mpeg4", True, False, True),
        ("st-h264:crf=30", True, False, True),
        ("st-c", True, False, True),
        ("st-c2", True, False, True),
    ],
)
def test_flags(codecs_pm, spec, differentiable, stochastic, video):
    d = codecs_pm.build_degradation(spec)
    assert (d.differentiable, d.stochastic, d.video) == (differentiable, stochastic, video)
    meta = codecs_pm.get("degradations", spec.split(":")[0]).metadata
    assert meta["differentiable"] == differentiable and meta["video"] == video


def test_chain_flags_and_order(codecs_pm):
    chain = codecs_pm.build_degradation("jpeg:quality=75+h264:crf=23")
    assert [type(s).__name__ for s in chain.stages] == ["JPEG", "VideoCompression"]
    assert chain.stages[0].quality == 75 and chain.stages[1].codecs[0].crf == 23
    assert chain.video and not chain.differentiable
    assert codecs_pm.build_degradation("diffjpeg:quality=50+st-c2").differentiable


def test_parameters_reach_the_stages(codecs_pm):
    d = codecs_pm.build_degradation("diffjpeg:quality_range=50:95,rounding=cubic")
    assert d.quality_range == (50, 95) and d.rounding == "cubic"
    m = codecs_pm.build_degradation("mpeg4:qscale=7,gop=5,fps=25")
    assert m.codecs[0].qscale == 7 and m.codecs[0].gop == 5 and m.fps == 25.0
    c2 = codecs_pm.build_degradation("c2:crf=30")
    assert [c.encoder for c in c2.codecs] == ["mpeg4", "libx264"] and c2.codecs[1].crf == 30


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("jpeg:quality=0", "quality must be in 1..100"),
        ("jpeg:qualty=5", "unknown parameter 'qualty'"),
        ("h264:preset=turbo", "not one of"),
        ("h264:crf=60", "crf must be in 0..51"),
        ("mpeg4:qscale=40", "qscale must be in 1..31"),
        ("diffjpeg:quality_range=95", "MIN:MAX"),
        ("diffjpeg:quality_range=90:50", "empty quality range"),
        ("resize:scale=0", r"scale=0.0 must lie in \[0.01, 4\]"),
    ],
)
def test_bad_specs_are_one_line_errors(codecs_pm, spec, match):
    with pytest.raises(SpecError, match=match) as info:
        codecs_pm.build_degradation(spec)
    assert "\n" not in str(info.value)


def test_missing_encoder_is_one_line_naming_it(codecs_pm, monkeypatch):
    from lb_codecs import backends

    monkeypatch.setattr(backends, "_encoder_available", lambda name: name != "libx264")
    stage = codecs_pm.build_degradation("h264")
    with pytest.raises(LBError) as info:
        stage(torch.zeros(2, 3, 16, 16))
    msg = str(info.value)
    assert "\n" not in msg and "'libx264'" in msg and "H.264" in msg and "pip install av" in msg
    assert info.value.exit_code == 3


def test_missing_pyav_is_one_line(monkeypatch):
    import builtins

    from lb_codecs import backends

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(LBError, match=r"PyAV cannot be imported .*pip install av") as info:
        backends.require_encoder("mpeg4")
    assert "\n" not in str(info.value)
