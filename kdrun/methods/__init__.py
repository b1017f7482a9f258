"""Distillation methods: a registry, like models and datasets.

A method is one module in this package: a schema dataclass (its typed options, read from
`conf/loss/<name>.yaml`) and a builder registered with `@register_method`. The builder gets
the options and a `MethodContext` (the run's T and alpha, the student and teacher, a sample
input, the training-set size) and returns a `Method`: an nn.Module, so any trainable parts
(connectors, embeddings) are optimised with the student and its state (parameters and buffers
such as CRD's memory bank) is saved in `last.pt` and `checkpoint.pt`. A method declares the
named stages it reads (kdrun.models.stages), whether it needs the teacher, and summary keys.
"""

from __future__ import annotations

import importlib
import pkgutil

from kdrun.methods.base import (  # noqa: F401
    METHODS,
    Batch,
    LogitLoss,
    LogitParams,
    Method,
    MethodContext,
    Params,
    as_method,
    build_method,
    method_spec,
    parse_params,
    register_method,
)

NOT_METHODS = ("base", "losses")  # modules of this package that register nothing


def _register_all() -> None:
    """Import every method module (each registers itself with kdrun.methods.base)."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name not in NOT_METHODS:
            importlib.import_module(f"{__name__}.{module.name}")


_register_all()
