"""Name -> constructor tables for datasets and models: adding one is a decorator."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

from kdrun.core.errors import KdrunError


class Registry:
    """Constructors by name; building checks the name and the keyword arguments first."""

    LISTED = 200  # an unknown name's error lists every name of its family up to this many

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._lazy: dict[str, tuple[str, str]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def register_lazy(self, prefix: str, module: str, what: str) -> None:
        """Names starting with `prefix` are registered by importing `module` when one is first
        asked for, so that a family can rely on a package that is slow to import."""
        self._lazy[prefix] = (module, what)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        for prefix in [p for p in self._lazy if name.startswith(p)]:
            importlib.import_module(self._lazy.pop(prefix)[0])
        if name not in self._builders:
            families = [f"{prefix}<name> ({what})" for prefix, (_, what) in self._lazy.items()]
            family = [n for n in self._builders if n.split("_", 1)[0] == name.split("_", 1)[0]]
            if len(family) > self.LISTED:  # a family of a thousand names (timm's): the closest of them
                close = difflib.get_close_matches(name, family, n=5, cutoff=0.5)
                raise KdrunError(f"unknown {self.kind} '{name}' (none of the {len(family)} '{name.split('_', 1)[0]}_' "
                                 "names); " + (f"closest: {', '.join(close)}" if close else "check the spelling"))
            raise KdrunError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names() + families)}")
        return self._builders[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        builder = self.get(name)
        try:
            inspect.signature(builder).bind(*args, **kwargs)
        except TypeError as error:
            options = [p for p in inspect.signature(builder).parameters][len(args):]
            raise KdrunError(
                f"{self.kind} '{name}' does not accept these options ({error}); its options: {', '.join(options)}"
            ) from None
        try:
            return builder(*args, **kwargs)
        except (ValueError, TypeError, RuntimeError, OverflowError, IndexError, ZeroDivisionError) as error:
            # a negative width, a class count of -3, ...: torch's complaint, with the options to fix
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:150]
            raise KdrunError(f"cannot build {self.kind} '{name}' with these options ({first}); "
                             f"check its kwargs") from None
