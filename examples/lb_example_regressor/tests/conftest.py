"""Fixtures of the example plugin's tests: a plugin manager that has the plugin registered.

Installed (``pip install examples/lb_example_regressor``), lbcore finds the plugin through its
entry point; run from a source checkout without installing, the fixture registers the plugin
module itself, the same way the entry point would.
"""

from __future__ import annotations

import pytest

from lbcore.testing import fresh_plugin_manager


@pytest.fixture
def pm():
    import lb_example_regressor.plugin as plugin

    with fresh_plugin_manager() as manager:
        if "example-regressor" not in manager.components("extractors"):
            manager.add_plugin(plugin, name="example", distribution="lb-example-regressor")
        yield manager
