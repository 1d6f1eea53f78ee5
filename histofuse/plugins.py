"""Building the plugin manager: built-ins and third parties through one entry-point group."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from types import ModuleType

import pluggy

from histofuse import hookspecs


@dataclass(frozen=True)
class PluginFailure:
    """An entry point whose module could not be imported or registered."""

    name: str
    distribution: str
    error: str


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution gave each plugin and which failed."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}
        self.failures: list[PluginFailure] = []

    def register_plugin(self, plugin: object, name: str, distribution: str = "(local)") -> None:
        self.register(plugin, name=name)
        self.distributions[name] = distribution

    def load_entry_points(self, group: str = hookspecs.PROJECT) -> None:
        """Import every entry point of ``group``; a failing one is recorded, not raised."""
        seen: set[tuple[str, str]] = set()
        # entry_points(group=...) reads each distribution's entry_points.txt only: parsing every METADATA
        # file to learn a name cost ~0.4 s of start-up in an environment of a few hundred packages.
        for ep in importlib.metadata.entry_points(group=group):
            # The same distribution can be visible twice on sys.path (editable + build dir).
            if (ep.name, ep.value) in seen:
                continue
            seen.add((ep.name, ep.value))
            label = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "(unknown)"
            if self.get_plugin(ep.name) is not None:
                other = self.distributions.get(ep.name, "?")
                self.failures.append(PluginFailure(ep.name, label, f"plugin name '{ep.name}' is already used by {other}"))
                continue
            try:
                module = ep.load()
                self.register_plugin(module, ep.name, label)
                self.check_pending()
            except pluggy.PluginValidationError as exc:
                # e.g. a misspelt hook name: this plugin is broken, the others still work
                self.unregister(name=ep.name)
                self.distributions.pop(ep.name, None)
                self.failures.append(PluginFailure(ep.name, label, f"invalid plugin: {exc}"))
            except Exception as exc:  # any import error must not take the CLI down
                self.failures.append(PluginFailure(ep.name, label, f"{type(exc).__name__}: {exc}"))


    def load_modules(self, names: list[str]) -> None:
        """Register modules named in ``HISTOFUSE_PLUGINS``: a plugin in development, used without installing it."""
        for name in names:
            try:
                self.register_plugin(importlib.import_module(name), name, "HISTOFUSE_PLUGINS")
                self.check_pending()
            except pluggy.PluginValidationError as exc:
                self.unregister(name=name)
                self.failures.append(PluginFailure(name, "HISTOFUSE_PLUGINS", f"invalid plugin: {exc}"))
            except Exception as exc:
                self.failures.append(PluginFailure(name, "HISTOFUSE_PLUGINS", f"{type(exc).__name__}: {exc}"))


def create_plugin_manager(
    *, entry_points: bool = True, plugins: tuple[ModuleType | object, ...] = ()
) -> PluginManager:
    """Return a fresh manager; tests pass ``entry_points=False`` and their own ``plugins``."""
    pm = PluginManager()
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        pm.register_plugin(plugin, name)
    if entry_points:
        pm.load_entry_points()
        pm.load_modules([n.strip() for n in os.environ.get("HISTOFUSE_PLUGINS", "").split(",") if n.strip()])
    pm.check_pending()
    return pm
