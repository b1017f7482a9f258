"""The optional `kdrun[deploy]` libraries, imported when first needed (a missing one: a one-line install hint)."""

from __future__ import annotations

import importlib
from types import ModuleType

from kdrun.core.errors import KdrunError

INSTALL_HINT = "pip install 'kdrun[deploy]'"


def require(module: str) -> ModuleType:
    """`import module`, or a KdrunError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise KdrunError(f"exporting and running ONNX models needs {module.split('.')[0]}, part of the extra "
                         f"kdrun[deploy]: {INSTALL_HINT}") from None
