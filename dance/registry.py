"""Plugin discovery: entry points in the group ``dance``, loaded into a pluggy plugin manager.

Each entry point is imported on its own, so one broken plugin is reported by name with its error
while the others load. Components are collected by calling each plugin's hook implementation with
a ``register`` callback, which lets the registry know which plugin registered what.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from dance import hookspecs
from dance.errors import RunError, UsageError, did_you_mean, unknown_name
from dance.interfaces import Advantage, Logger, Objective, Policy, Reward, Runtime, Sampler

ENTRY_POINT_GROUP = "dance"
ENV_VAR = "DANCE_PLUGINS"

# kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type]] = {
    "policy": ("register_policies", Policy),
    "sampler": ("register_samplers", Sampler),
    "reward": ("register_rewards", Reward),
    "advantage": ("register_advantages", Advantage),
    "objective": ("register_objectives", Objective),
    "logger": ("register_loggers", Logger),
}


class DuplicateComponentError(UsageError):
    """Two plugins registered the same name for the same kind of component."""


class PluginHookError(RunError):
    """A plugin's lifecycle hook raised: the run stops with one line naming the plugin."""


@dataclass
class PluginInfo:
    """One plugin (an entry point) and what became of it."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    loaded: bool = False
    error: str | None = None
    traceback: str | None = None
    components: list[tuple[str, str]] = field(default_factory=list)

    def label(self) -> str:
        dist = f" from {self.distribution} {self.version}" if self.distribution else ""
        return f"'{self.name}'{dist}"


@dataclass
class ComponentInfo:
    kind: str
    name: str
    cls: type
    plugin: str


class Registry:
    """Every installed component, by kind and name."""

    def __init__(self) -> None:
        self.plugins: dict[str, PluginInfo] = {}
        self.components: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in KINDS}
        self.manager = pluggy.PluginManager("dance")
        self.manager.add_hookspecs(hookspecs)

    # -- loading ---------------------------------------------------------------------------------

    def add_plugin(self, info: PluginInfo, module: ModuleType | object) -> None:
        """Register a loaded plugin module and collect its components."""
        self.plugins[info.name] = info
        try:
            self.manager.register(module, name=info.name)
        except Exception as exc:  # a malformed hookimpl: report it against this plugin
            info.error = f"{type(exc).__name__}: {exc}"
            return
        info.loaded = True
        unknown = self._unknown_hooks(info.name)
        if unknown:  # a misspelt hook would otherwise never be called, without a word
            known = [n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "dance_spec", 0)]
            info.loaded = False
            info.error = (
                f"implements '{unknown[0]}', which is not a dance hook."
                f"{did_you_mean(unknown[0], known)}"
            )
        for kind, (hook_name, _base) in KINDS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name != info.name:
                    continue
                try:
                    impl.function(register=lambda cls, _k=kind: self._register(_k, cls, info))
                except DuplicateComponentError:
                    raise
                except Exception as exc:
                    info.loaded = False
                    info.error = f"{type(exc).__name__}: {exc}"

    def _unknown_hooks(self, plugin: str) -> list[str]:
        """Hooks ``plugin`` implements that no spec in :mod:`dance.hookspecs` declares."""
        return [
            name
            for name, caller in sorted(vars(self.manager.hook).items())
            if not name.startswith("_")
            and not caller.has_spec()
            and any(i.plugin_name == plugin and not i.optionalhook for i in caller.get_hookimpls())
        ]

    def _register(self, kind: str, cls: Any, info: PluginInfo) -> None:
        base = KINDS[kind][1]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(
                f"{kind} registration expects a subclass of {base.__name__}, got {cls!r}"
            )
        for attr in ("name", "config_class"):
            if not hasattr(cls, attr):
                raise TypeError(f"{kind} class {cls.__name__} does not define '{attr}'")
        existing = self.components[kind].get(cls.name)
        if existing is not None:
            other = self.plugins[existing.plugin]
            raise DuplicateComponentError(
                f"{kind} '{cls.name}' is registered by both plugin {other.label()} and plugin "
                f"{info.label()}; uninstall one, or choose plugins with {ENV_VAR}."
            )
        self.components[kind][cls.name] = ComponentInfo(kind, cls.name, cls, info.name)
        info.components.append((kind, cls.name))

    # -- lookup ----------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> type:
        """The component class registered as ``name``; an unknown name is a UsageError."""
        try:
            return self.components[kind][name].cls
        except KeyError:
            raise self._unknown(kind, name) from None

    def _unknown(self, kind: str, name: str) -> UsageError:
        err = unknown_name(kind, name, self.components[kind])
        broken = [p for p in self.plugins.values() if p.error]
        if broken:
            names = ", ".join(p.name for p in broken)
            err = UsageError(f"{err} Plugins that failed to load: {names} (see `dance plugins`).")
        return err

    def call_hook(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of the lifecycle hook ``hook_name`` (see
        :mod:`dance.hookspecs`), in pluggy's order (the last registered first, ``tryfirst`` /
        ``trylast`` respected), each with the arguments it declares.

        The implementations are called one by one, not through ``manager.hook``, so that an
        error can name its plugin: the first that raises stops the call with a
        :class:`PluginHookError`. Plugins that failed to load are left out.
        """
        for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls()):
            info = self.plugins.get(impl.plugin_name)
            if info is not None and not info.loaded:
                continue
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                raise PluginHookError(
                    f"plugin '{impl.plugin_name}' implements {hook_name} as a hook wrapper; "
                    "lifecycle hooks take plain implementations (drop wrapper=True)."
                )
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:
                raise PluginHookError(
                    f"plugin '{impl.plugin_name}' failed in its {hook_name} hook: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    def default_sampler(self, prediction_type: str) -> str:
        """The sampler that declares itself the training default for ``prediction_type`` models
        (``Sampler.default_for``); none or several is a UsageError saying how to choose."""
        return self._declared_sampler("default_for", prediction_type, "default")

    def deterministic_sampler(self, prediction_type: str) -> tuple[str, dict[str, Any]]:
        """The noise-free sampler of ``prediction_type`` models (``Sampler.deterministic_for``)
        and the options that make it noise-free, for evaluation and `dance sample`."""
        name = self._declared_sampler("deterministic_for", prediction_type, "deterministic")
        return name, dict(self.get("sampler", name).deterministic_options)

    def _declared_sampler(self, attribute: str, prediction_type: str, role: str) -> str:
        found = [
            info
            for info in self.components["sampler"].values()
            if prediction_type in getattr(info.cls, attribute)
        ]
        if len(found) == 1:
            return found[0].name
        if not found:
            raise UsageError(
                f"no installed sampler declares itself the {role} sampler of {prediction_type} "
                f"models; name one with --sampler NAME or sampler.name=NAME (see `dance plugins`)."
            )
        claims = " and ".join(
            f"'{i.name}' (plugin {self.plugins[i.plugin].label()})" for i in found
        )
        raise UsageError(
            f"samplers {claims} both declare themselves the {role} sampler of {prediction_type} "
            f"models; name one with --sampler NAME or sampler.name=NAME, or choose plugins with "
            f"{ENV_VAR}."
        )

    def create(self, kind: str, name: str, options: dict[str, Any] | None, runtime: Runtime) -> Any:
        """Build a component from its name and config values."""
        from dance.config import build

        cls = self.get(kind, name)
        config = build(cls.config_class, options, prefix=f"{kind} '{name}': ")
        return cls(config, runtime)


def _selected() -> set[str] | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def load_registry(extra: dict[str, ModuleType | object] | None = None) -> Registry:
    """Discover every plugin of the entry-point group ``dance`` (and ``extra`` ones, for tests)."""
    registry = Registry()
    entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    selected = _selected()
    seen: set[str] = set()
    for ep in entry_points:
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        if selected is not None and ep.name not in selected:
            continue
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
        )
        try:
            module = ep.load()
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            registry.plugins[ep.name] = info
            continue
        registry.add_plugin(info, module)
    for name, module in (extra or {}).items():
        registry.add_plugin(PluginInfo(name, repr(module), None, None), module)
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin at run time)."""
    global _REGISTRY
    _REGISTRY = None
