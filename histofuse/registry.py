"""The registry: every component a plugin provides, by kind and name."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from histofuse.components import KINDS, ComponentSpec
from histofuse.errors import PluginError
from histofuse.plugins import PluginFailure, PluginManager

_HOOK_OF_KIND = {
    "backbone": "register_backbones",
    "fusion": "register_fusions",
    "normalizer": "register_normalizers",
    "dataset": "register_datasets",
}


@dataclass(frozen=True)
class Entry:
    kind: str
    spec: ComponentSpec
    plugin: str
    distribution: str

    @property
    def name(self) -> str:
        return self.spec.name


class Registry:
    """Components collected from a plugin manager's ``register_*`` hooks.

    A name claimed twice within one kind is an error naming both plugins. A plugin
    whose hook raises is recorded as a failure like one that failed to import.
    """

    def __init__(self, pm: PluginManager):
        self.pm = pm
        self.failures: list[PluginFailure] = list(pm.failures)
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for kind, hook_name in _HOOK_OF_KIND.items():
            self._collect(kind, hook_name)

    def _collect(self, kind: str, hook_name: str) -> None:
        expected = KINDS[kind]
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name
            dist = self.pm.distributions.get(plugin, "(local)")
            try:
                specs = list(impl.function() or [])
            except Exception as exc:  # a broken plugin only fails runs that need it
                self.failures.append(PluginFailure(plugin, dist, f"{hook_name} raised {type(exc).__name__}: {exc}"))
                continue
            wrong = [type(spec).__name__ for spec in specs if not isinstance(spec, expected)]
            if wrong:
                self.failures.append(
                    PluginFailure(plugin, dist, f"{hook_name} returned {', '.join(wrong)}; expected {expected.__name__} objects")
                )
                continue
            for spec in specs:
                taken = self._entries[kind].get(spec.name)
                if taken is not None:
                    raise PluginError(
                        f"{kind} name '{spec.name}' is registered twice: by plugin '{taken.plugin}' "
                        f"({taken.distribution}) and by plugin '{plugin}' ({dist}). "
                        "Uninstall one of them, or rename the component in your own plugin."
                    )
                self._entries[kind][spec.name] = Entry(kind, spec, plugin, dist)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self) -> list[Entry]:
        return [e for kind in KINDS for e in sorted(self._entries[kind].values(), key=lambda e: e.name)]

    def entry(self, kind: str, name: str) -> Entry:
        if kind not in self._entries:
            raise PluginError(f"unknown component kind '{kind}'; kinds are: {', '.join(KINDS)}")
        found = self._entries[kind].get(name)
        if found is None:
            raise PluginError(self.unknown_message(kind, name))
        return found

    def get(self, kind: str, name: str) -> ComponentSpec:
        return self.entry(kind, name).spec

    def unknown_message(self, kind: str, name: str) -> str:
        """Say what is known, the closest match, and which broken plugins might have provided it."""
        known = self.names(kind)
        parts = [f"unknown {kind} '{name}'."]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            parts.append(f"Did you mean {' or '.join(repr(c) for c in close)}?")
        parts.append(f"Registered {kind}s: {', '.join(known) if known else '(none)'}.")
        if self.failures:
            broken = ", ".join(f"'{f.name}' ({f.error})" for f in self.failures)
            parts.append(f"These plugins failed to load and may provide it: {broken}.")
        else:
            parts.append("Run `histofuse plugins` to see every installed plugin.")
        return " ".join(parts)


def default_registry() -> Registry:
    """The registry of everything installed in this environment."""
    from histofuse.plugins import create_plugin_manager

    return Registry(create_plugin_manager())
