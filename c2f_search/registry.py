"""One registry mechanism for every pluggable piece (compression methods, model families, phase
controllers, objectives): entries are added by a decorator, and the package that holds the built-in
ones is imported module by module on first use, so a new built-in is one file and an outside one is
one ``register`` call."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import C2FError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry. `package` is discovered on first lookup; `unknown(name, names)` builds the
    error for a name that is not registered (each kind words it for its own flag)."""

    def __init__(
        self, kind: str, package: str | None = None, unknown: Callable[[str, list[str]], Exception] | None = None
    ):
        self.kind, self.package = kind, package
        self._entries: dict[str, T] = {}
        self._discovered = package is None
        self._unknown = unknown or (
            lambda name, names: C2FError(f"unknown {kind} {name!r}; choose one of {', '.join(names)}")
        )

    def register(self, name: str, entry: T | None = None):
        """``register(name, entry)``, or ``@register(name)`` over a class or function."""
        if entry is not None:
            self._entries[name] = entry
            return entry

        def deco(obj):
            self._entries[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove `name` (a plugin that is unloaded; tests that register toys)."""
        self._entries.pop(name, None)

    def _discover(self) -> None:
        if not self._discovered:
            self._discovered = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> T:
        self._discover()
        if name not in self._entries:
            raise self._unknown(name, self.names())
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._discover()
        return sorted(self._entries.items())
