"""Name -> constructor tables for datasets and models: adding one is a decorator."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from kdrun.errors import KdrunError


class Registry:
    """Constructors by name; building checks the name and the keyword arguments first."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise KdrunError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
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
        return builder(*args, **kwargs)
