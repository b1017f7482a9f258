"""The optional `kdrun[deploy]` libraries, imported when first needed (a missing one: a one-line install hint)."""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

from kdrun.core.errors import KdrunError

INSTALL_HINT = "pip install 'kdrun[deploy]'"


def require(module: str) -> ModuleType:
    """`import module`, or a KdrunError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise KdrunError(f"exporting and running ONNX models needs {module.split('.')[0]}, part of the extra "
                         f"kdrun[deploy]: {INSTALL_HINT}") from None


# Loggers that narrate every graph pass at INFO ("Removed 29 unused nodes"): a run's log keeps their warnings only.
CHATTY = ("onnx_ir", "onnxscript", "onnxruntime", "torch.onnx")


@contextmanager
def quiet() -> Iterator[None]:
    """The exporter's and quantizer's INFO lines left out of the run's log while they work."""
    loggers = [logging.getLogger(name) for name in CHATTY]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.level))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
