"""Plugin loading, registry errors and isolation, through real entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from lbcore.errors import PluginLoadError, SpecError
from lbcore.plugins import KINDS, PluginManager, PluginWarning

BROKEN_IMPORT = "raise RuntimeError('boom at import')\n"
BROKEN_REGISTER = '''
from lbcore import hookimpl

@hookimpl
def register_extractors(register):
    raise ValueError("boom at registration")
'''
DUPLICATE = '''
from lbcore import hookimpl

def make():
    """Another mifgsm."""
    return None

@hookimpl
def register_optimizers(register):
    register("mifgsm", make)
'''
MISSPELT = '''
from lbcore import hookimpl

@hookimpl
def register_extractor(register):  # missing the final s
    pass
'''


def _names(pm, kind):
    return set(pm.components(kind))


def test_builtins_are_registered_through_hooks():
    pm = PluginManager(load_entry_points=False)
    assert {"fgsm", "ifgsm", "mifgsm"} <= _names(pm, "optimizers")
    assert {"heatmap-cosine", "landmark-displacement"} <= _names(pm, "losses")
    assert "haar" in _names(pm, "detectors")
    report = pm.plugin_report()
    assert report[0]["name"] == "lbcore"
    assert set(report[0]["components"]) == set(KINDS)


def test_every_hook_is_called(tiny_plugin, install_dist):
    src = '''
from lbcore import hookimpl
def f(x: int = 1):
    """Thing."""
    return x
@hookimpl
def register_extractors(register): register("e1", f)
@hookimpl
def register_losses(register): register("l1", f)
@hookimpl
def register_optimizers(register): register("o1", f)
@hookimpl
def register_degradations(register): register("d1", f)
@hookimpl
def register_detectors(register): register("t1", f)
@hookimpl
def register_attacks(register): register("a1", f)
@hookimpl
def register_commands(cli):
    import click
    @cli.command("hello-test")
    def hello():
        click.echo("hi")
'''
    install_dist(tiny_plugin, "lb-test-all", "all", "lb_test_all", src)
    pm = PluginManager()
    for kind, name in zip(KINDS, ["e1", "l1", "o1", "d1", "t1", "a1"], strict=True):
        assert name in _names(pm, kind)
        assert pm.build(kind, f"{name}:x=7") == 7
    import click

    group = click.Group()
    pm.register_commands(group)
    assert "hello-test" in group.commands
    dist = next(d for d in pm.plugin_report() if d["name"] == "lb-test-all")
    assert dist["version"] == "1.0"
    assert dist["components"]["extractors"] == ["e1"]


def test_broken_import_is_a_warning_and_others_load(tiny_plugin, install_dist):
    install_dist(tiny_plugin, "lb-test-broken", "broken", "broken_import_plugin", BROKEN_IMPORT)
    with pytest.warns(PluginWarning, match="lb-test-broken.*boom at import"):
        pm = PluginManager()
    assert "tiny" in _names(pm, "extractors")
    assert any("lb-test-broken" in msg for _, msg in pm.failures)


def test_broken_registration_is_a_warning(tiny_plugin, install_dist):
    install_dist(tiny_plugin, "lb-test-broken-reg", "brokenreg", "broken_reg_plugin", BROKEN_REGISTER)
    pm = PluginManager()
    with pytest.warns(PluginWarning, match="lb-test-broken-reg.*boom at registration"):
        names = _names(pm, "extractors")
    assert "tiny" in names


def test_strict_mode_raises(tiny_plugin, monkeypatch, install_dist):
    install_dist(tiny_plugin, "lb-test-broken", "broken", "broken_import_plugin", BROKEN_IMPORT)
    monkeypatch.setenv("LB_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="lb-test-broken"):
        PluginManager()


def test_duplicate_name_names_both_distributions(tiny_plugin, install_dist):
    install_dist(tiny_plugin, "lb-test-dup", "dup", "lb_test_dup", DUPLICATE)
    pm = PluginManager()
    with pytest.warns(PluginWarning, match=r"optimizer 'mifgsm' registered twice: by 'lbcore' and by 'lb-test-dup'"):
        comps = pm.components("optimizers")
    assert comps["mifgsm"].distribution == "lbcore"


def test_misspelt_hook_fails_loudly(tiny_plugin, install_dist):
    install_dist(tiny_plugin, "lb-test-misspelt", "misspelt", "lb_test_misspelt", MISSPELT)
    with pytest.warns(PluginWarning, match="lb-test-misspelt.*register_extractor"):
        pm = PluginManager()
    assert "lb-test-misspelt" not in {d["name"] for d in pm.plugin_report()}


def test_disable_and_load_only(tiny_plugin, monkeypatch, install_dist):
    install_dist(tiny_plugin, "lb-test-broken", "broken", "broken_import_plugin", BROKEN_IMPORT)
    monkeypatch.setenv("LB_DISABLE_PLUGINS", "broken")
    monkeypatch.setenv("LB_LOAD_PLUGINS", "lb-test-tiny,broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = PluginManager()
    assert "tiny" in _names(pm, "extractors")
    monkeypatch.delenv("LB_DISABLE_PLUGINS")
    monkeypatch.setenv("LB_LOAD_PLUGINS", "lb-test-tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = PluginManager()
    assert {d["name"] for d in pm.plugin_report()} == {"lbcore", "lb-test-tiny"}


def test_unknown_component_lists_valid():
    pm = PluginManager(load_entry_points=False)
    with pytest.raises(SpecError, match=r"unknown optimizer 'adam' \(valid: fgsm, ifgsm, mifgsm, mifgsm-l2\)"):
        pm.build("optimizers", "adam")


def test_registration_is_lazy(tiny_plugin):
    """Listing plugins imports no torch and builds nothing."""
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from lbcore.cli import cli\n"
        "r = CliRunner().invoke(cli, ['plugins', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r2 = CliRunner().invoke(cli, ['--help'])\n"
        "assert r2.exit_code == 0\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'report': json.loads(r.output)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["torch"] is False
    tiny = next(d for d in data["report"] if d["name"] == "lb-test-tiny")
    assert tiny["components"]["extractors"] == ["tiny"]


def test_cli_starts_with_a_broken_plugin(tiny_plugin, install_dist):
    install_dist(tiny_plugin, "lb-test-broken", "broken", "broken_import_plugin", BROKEN_IMPORT)
    out = subprocess.run([sys.executable, "-m", "lbcore", "plugins"], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0
    assert "lb-test-tiny" in out.stdout
    assert "lb-test-broken" in out.stderr and "boom at import" in out.stderr
