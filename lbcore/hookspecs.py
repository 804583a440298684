"""Hook specifications: one ``register_<kind>(register)`` verb per component kind.

A plugin implements any of these with ``@lbcore.hookimpl`` and calls ``register(...)`` as often
as it likes. ``register(name, factory, **metadata)``:

* ``name`` - what users type in specs (``fan``, ``mifgsm``, ``jpeg``);
* ``factory`` - a callable returning the component; its keyword parameters (with type
  annotations and defaults) are the spec's keys. It is called only when the component is used,
  so registering must not import torch or read weights;
* ``metadata`` - optional: ``summary`` (one line; default: the factory's docstring's first
  line), ``weights`` (a list of :class:`lbcore.weights.WeightsFile`), anything else a command
  may show.

The hook API is versioned by :data:`lbcore.HOOK_API_VERSION`; see ``docs/plugins.md``.
Hooks only ever *gain* arguments, and each implementation is called with just the arguments
it declares, so a plugin written against an older hook API keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("lbcore")
hookimpl = pluggy.HookimplMarker("lbcore")

Register = Callable[..., None]


@hookspec
def register_extractors(register: Register) -> None:
    """Register landmark extractors (factories returning :class:`lbcore.Extractor`)."""


@hookspec
def register_losses(register: Register) -> None:
    """Register attack losses: callables ``(clean, adv) -> (F,)`` per-face loss to minimise."""


@hookspec
def register_optimizers(register: Register) -> None:
    """Register update rules (:class:`lbcore.UpdateRule`) such as FGSM and MI-FGSM."""


@hookspec
def register_degradations(register: Register) -> None:
    """Register degradations (:class:`lbcore.Degradation`): JPEG, video codecs, blur, ..."""


@hookspec
def register_detectors(register: Register) -> None:
    """Register face detectors (:class:`lbcore.Detector`)."""


@hookspec
def register_attacks(register: Register) -> None:
    """Register attacks: named recipes (factories returning :class:`lbcore.AttackConfig`; build
    them with :func:`lbcore.attacks.recipe`). A compatible addition: plugins written before it are unaffected."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``lb`` group (``cli`` is the :class:`click.Group`)."""
