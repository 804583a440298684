"""Errors that reach the user as one line.

Every error a user can cause (a bad spec, a missing file, a broken checkpoint) is an
``LBError``: the CLI prints its message on one line, prefixed by the program name, and exits
with the error's ``exit_code``. Anything else is a bug and keeps its traceback.

Exit codes (documented in the README):

* 0 - everything done;
* 1 - the run finished but some inputs failed (each reported on its own line);
* 2 - bad usage: a bad spec, option or argument;
* 3 - a missing or invalid resource (weights, plugin, encoder);
"""

from __future__ import annotations

from typing import Any


class LBError(Exception):
    """A user-facing error; ``str(err)`` is one line naming the file or thing and the problem."""

    exit_code = 1


class SpecError(LBError, ValueError):
    """A component spec string is malformed or names an unknown component or parameter."""

    exit_code = 2


class RegistryError(LBError):
    """A plugin registered something invalid (e.g. the same name twice)."""

    exit_code = 3


class PluginLoadError(LBError):
    """A plugin failed to import or to register (raised only with ``LB_STRICT_PLUGINS=1``)."""

    exit_code = 3


class WeightsError(LBError):
    """A checkpoint is missing, refused (unsafe or corrupt) or does not fit the network."""

    exit_code = 3


class InputError(LBError):
    """An input file cannot be read or is not usable (too large, not an image, ...)."""

    exit_code = 1


class MissingExtraError(LBError):
    """An optional part of lbcore is used but its package is not installed."""

    exit_code = 3


def need_extra(module: str, extra: str, purpose: str) -> Any:
    """Import ``module`` for ``purpose``, or raise a one-line :class:`MissingExtraError` naming
    the extra that installs it (``pip install 'lbcore[video]'``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{purpose} needs the Python package {module!r}, which is not installed: "
                                f"pip install 'lbcore[{extra}]'") from None
