"""Landmark Breaker core: the plugin framework, the attack engine and the public API.

Importing ``lbcore`` is cheap: torch and the heavier modules load on first attribute access.
Plugins must use only the names in ``__all__``.
"""

from __future__ import annotations

import importlib
from typing import Any

from lbcore.errors import LBError, SpecError, WeightsError
from lbcore.hookspecs import hookimpl

HOOK_API_VERSION = 1
"""Version of the hook surface; bumped only on an incompatible change (see docs/plugins.md)."""

_LAZY = {
    # contract
    "LandmarkScheme": "lbcore.types",
    "Faces": "lbcore.types",
    "ExtractorOutput": "lbcore.types",
    "ConvOutput": "lbcore.extractor",
    "ResidualAdd": "lbcore.extractor",
    "Extractor": "lbcore.extractor",
    "HeatmapExtractor": "lbcore.extractor",
    "affine_crop": "lbcore.extractor",
    "apply_affine": "lbcore.extractor",
    "compose_affine": "lbcore.extractor",
    "scale_affine": "lbcore.extractor",
    "soft_argmax": "lbcore.extractor",
    "argmax_2d": "lbcore.extractor",
    "UpdateRule": "lbcore.optimizers",
    "Degradation": "lbcore.degradation",
    "Chain": "lbcore.degradation",
    "Detector": "lbcore.detectors",
    # engine
    "AttackConfig": "lbcore.attacks",
    "recipe": "lbcore.attacks",
    "AttackResult": "lbcore.engine",
    "PRESETS": "lbcore.engine",  # deprecated: lb list attacks / lbcore.attacks
    "preset": "lbcore.attacks",
    "attack": "lbcore.engine",
    "resolve_device": "lbcore.engine",
    "heatmap_cosine_loss": "lbcore.losses",
    # plugins
    "PluginManager": "lbcore.plugins",
    "get_plugin_manager": "lbcore.plugins",
    "parse_spec": "lbcore.spec",
    # end-user path
    "protect": "lbcore.apps.protection",
    "ProtectOptions": "lbcore.apps.protection",
    # weights
    "WeightsFile": "lbcore.weights",
    "resolve_weights": "lbcore.weights",
    "load_checkpoint": "lbcore.weights",
    "extract_state_dict": "lbcore.weights",
    "load_state_dict_strict": "lbcore.weights",
}

__all__ = [
    "HOOK_API_VERSION",
    "LBError",
    "SpecError",
    "WeightsError",
    "hookimpl",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'lbcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
