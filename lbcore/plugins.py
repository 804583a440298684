"""A typed facade over pluggy: loading plugins, the component registry, building components.

Plugins are distributions exposing a module in the ``lbcore`` entry-point group. They are
loaded one at a time; a plugin that fails to import or register becomes a warning naming the
distribution and the error (``LB_STRICT_PLUGINS=1`` turns that into an error), and the others
still load. ``LB_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point or distribution name;
``LB_LOAD_PLUGINS=a,b`` loads only those. Built-in components are registered by
:mod:`lbcore.builtin` through the same hooks.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from lbcore import hookspecs
from lbcore.errors import PluginLoadError, RegistryError, SpecError
from lbcore.spec import bind_params, describe_params, parse_spec

KINDS = ("extractors", "losses", "optimizers", "degradations", "detectors", "attacks")
ENTRY_POINT_GROUP = "lbcore"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others were."""


@attrs.frozen
class Component:
    """One registered component."""

    name: str
    kind: str
    factory: Callable[..., Any]
    distribution: str
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @property
    def summary(self) -> str:
        s = self.metadata.get("summary")
        if s:
            return str(s)
        doc = (getattr(self.factory, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""

    def params(self) -> str:
        return describe_params(self.factory)


@attrs.define
class Distribution:
    """A loaded plugin distribution."""

    name: str
    version: str
    plugin_name: str
    components: dict[str, list[str]] = attrs.field(factory=lambda: {k: [] for k in KINDS})


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


class PluginManager:
    """The one place that knows pluggy. Use :func:`get_plugin_manager` for the shared one."""

    #: The hook specifications (a module or class); a subclass may add hooks or arguments.
    hookspecs: Any = hookspecs

    def __init__(self, *, load_entry_points: bool = True, builtin: bool = True) -> None:
        self._pm = pluggy.PluginManager("lbcore")
        self._pm.add_hookspecs(self.hookspecs)
        self.registry: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self.distributions: dict[str, Distribution] = {}
        self.failures: list[tuple[str, str]] = []
        self._registered = False
        if builtin:
            from lbcore import builtin as _builtin

            self.add_plugin(_builtin, name="lbcore", distribution="lbcore", version=_own_version())
        if load_entry_points:
            self.load_entry_points()

    # -- loading -----------------------------------------------------------------------
    @property
    def strict(self) -> bool:
        return os.environ.get("LB_STRICT_PLUGINS", "") not in ("", "0", "false")

    def _fail(self, dist: str, err: BaseException, what: str) -> None:
        msg = f"plugin {dist!r} failed to {what}: {type(err).__name__}: {err}"
        self.failures.append((dist, msg))
        if self.strict:
            raise PluginLoadError(msg) from err
        warnings.warn(msg, PluginWarning, stacklevel=3)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        import importlib_metadata

        disabled = _env_list("LB_DISABLE_PLUGINS") or set()
        only = _env_list("LB_LOAD_PLUGINS")
        seen: set[str] = set()
        for ep in sorted(importlib_metadata.entry_points(group=group), key=lambda e: e.name):
            dist_name = ep.dist.name if ep.dist is not None else ep.name
            version = ep.dist.version if ep.dist is not None else "0"
            if ep.name in seen:
                continue
            seen.add(ep.name)
            if ep.name in disabled or dist_name in disabled:
                continue
            if only is not None and ep.name not in only and dist_name not in only:
                continue
            try:
                module = ep.load()
            except (Exception, SystemExit) as err:  # a plugin calling sys.exit() must not end lb
                self._fail(dist_name, err, "import")
                continue
            self.add_plugin(module, name=ep.name, distribution=dist_name, version=version)

    def add_plugin(self, plugin: Any, *, name: str, distribution: str | None = None, version: str = "0") -> None:
        """Register a plugin object (module or instance with hook implementations)."""
        dist = distribution or name
        wanted = getattr(plugin, "LB_HOOK_API", None)
        if wanted is not None:
            from lbcore import HOOK_API_VERSION

            if not isinstance(wanted, int) or wanted > HOOK_API_VERSION:
                self._fail(dist, PluginLoadError(
                    f"needs hook API {wanted!r}, this lbcore provides {HOOK_API_VERSION} (upgrade lbcore)"),
                    "register")
                return
        try:
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except Exception as err:
            with contextlib.suppress(Exception):
                self._pm.unregister(plugin)
            self._fail(dist, err, "register")
            return
        self.distributions[name] = Distribution(dist, version, name)
        if self._registered:
            self._collect_from(name)

    # -- registry ----------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._registered:
            self._registered = True
            for name in list(self.distributions):
                self._collect_from(name)

    def _collect_from(self, plugin_name: str) -> None:
        dist = self.distributions[plugin_name]
        staged: list[Component] = []
        try:
            for kind in KINDS:
                if self._hookimpl(plugin_name, f"register_{kind}") is None:
                    continue

                def register(name: str, factory: Callable[..., Any], _kind: str = kind, **metadata: Any) -> None:
                    if not isinstance(name, str) or not name or any(c in name for c in ":,=+ "):
                        raise RegistryError(f"invalid {_kind[:-1]} name {name!r}")
                    if not callable(factory):
                        raise RegistryError(f"{_kind[:-1]} {name!r}: factory is not callable")
                    staged.append(Component(name, _kind, factory, dist.name, dict(metadata)))

                self._call_hook(plugin_name, f"register_{kind}", self.hook_arguments(kind, register))
        except (Exception, SystemExit) as err:
            self._fail(dist.name, err, "register its components")
            return
        for comp in staged:
            existing = self.registry[comp.kind].get(comp.name)
            if existing is not None:
                clash = RegistryError(
                    f"{comp.kind[:-1]} {comp.name!r} registered twice: by "
                    f"{existing.distribution!r} and by {comp.distribution!r}"
                )
                if existing.distribution == comp.distribution:
                    self._fail(dist.name, clash, "register its components")
                    return
                self._fail(comp.distribution, clash, "register its components")
                continue
            self.registry[comp.kind][comp.name] = comp
            dist.components[comp.kind].append(comp.name)

    def components(self, kind: str, *, sort: bool = True) -> dict[str, Component]:
        """The registered components of ``kind``, by name (``sort=False``: registration order)."""
        if kind not in KINDS:
            raise SpecError(f"unknown component kind {kind!r} (valid: {', '.join(KINDS)})")
        self._ensure()
        return dict(sorted(self.registry[kind].items())) if sort else dict(self.registry[kind])

    def get(self, kind: str, name: str) -> Component:
        comps = self.components(kind)
        if name not in comps:
            valid = ", ".join(comps) or "none installed"
            raise SpecError(f"unknown {kind[:-1]} {name!r} (valid: {valid})")
        return comps[name]

    def build(self, kind: str, spec: str, **overrides: Any) -> Any:
        """Build a component from a spec string; ``overrides`` are passed to the factory too.

        An extractor must declare its landmark scheme (point count and outer eye corners, which
        normalise every NME); one that does not is refused with one line."""
        name, raw = parse_spec(spec)
        comp = self.get(kind, name)
        params = bind_params(comp.factory, raw, spec)
        params.update(overrides)
        built = comp.factory(**params)
        if kind == "extractors" and callable(getattr(built, "decode", None)):  # an Extractor
            _check_scheme(name, comp.distribution, built)
        return built

    def build_degradation(self, spec: str) -> Any:
        """Build a degradation or a chain written ``a+b+c`` (``none`` is the identity)."""
        from lbcore.degradation import Chain

        parts = [p.strip() for p in spec.split("+") if p.strip()]
        if not parts:
            raise SpecError(f"empty degradation spec {spec!r}")
        if parts == ["none"]:
            return Chain([])
        stages = [self.build("degradations", p) for p in parts]
        return stages[0] if len(stages) == 1 else Chain(stages)

    def plugin_report(self) -> list[dict[str, Any]]:
        """``lb plugins --json``: each distribution, its version and its components."""
        self._ensure()
        return [
            {"name": d.name, "version": d.version, "components": {k: list(v) for k, v in d.components.items()}}
            for d in self.distributions.values()
        ]

    def register_commands(self, cli: Any) -> None:
        for name, _plugin in self._pm.list_name_plugin():
            if self._hookimpl(name, "register_commands") is None:
                continue
            dist = self.distributions.get(name)
            try:
                self._call_hook(name, "register_commands", {"cli": cli})
            except Exception as err:
                self._fail(dist.name if dist else name, err, "register its commands")

    def hook_names(self) -> Iterable[str]:
        return [n for n in dir(self.hookspecs) if n.startswith("register_")]

    # -- calling hooks -----------------------------------------------------------------
    def hook_arguments(self, kind: str, register: Callable[..., None]) -> dict[str, Any]:
        """Every argument the ``register_<kind>`` hook offers; each implementation receives
        only those it names (pluggy's rule), so adding an argument here and in the hookspec
        never breaks a plugin written against an older hook API (see docs/plugins.md)."""
        return {"register": register}

    def _hookimpl(self, plugin_name: str, hook: str) -> Any:
        caller = getattr(self._pm.hook, hook, None)
        if caller is None:
            return None
        for impl in caller.get_hookimpls():
            if impl.plugin_name == plugin_name:
                return impl
        return None

    def _call_hook(self, plugin_name: str, hook: str, arguments: dict[str, Any]) -> None:
        """Call one plugin's implementation with the arguments it declares (no others)."""
        impl = self._hookimpl(plugin_name, hook)
        if impl is not None:
            impl.function(**{k: arguments[k] for k in impl.argnames if k in arguments})


def _check_scheme(name: str, dist: str, extractor: Any) -> None:
    from lbcore.types import LandmarkScheme

    s = getattr(extractor, "scheme", None)
    if not isinstance(s, LandmarkScheme):
        raise RegistryError(f"extractor {name!r} ({dist}) declares no landmark scheme: set extractor.scheme to "
                            "lbcore.schemes.scheme_for(K) or a LandmarkScheme with its outer eye corners")
    a, b = s.eye_corners
    if not (0 <= a < s.num_points and 0 <= b < s.num_points and a != b):
        raise RegistryError(f"extractor {name!r} ({dist}): eye corners {s.eye_corners} are not two points "
                            f"of its {s.num_points}-point scheme {s.name!r}")


def _own_version() -> str:
    try:
        import importlib_metadata

        return importlib_metadata.version("lbcore")
    except Exception:
        return "0+unknown"


_shared: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _shared
    if _shared is None:
        _shared = PluginManager()
    return _shared


def reset_plugin_manager() -> None:
    """Forget the shared manager so that the next call reloads plugins (tests)."""
    global _shared
    _shared = None
