"""An architecture's inference cost, measured once per process and shared by every job that asks.

Latency, parameters and FLOPs do not depend on the trained weights: each process measures an
architecture once per device, thread count and latency setting (all the jobs of a stacked
group then record the same numbers, and `latency.measured` says so).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from kdrun.measure.latency import profile

_COSTS: dict[str, dict[str, Any]] = {}
ARCHITECTURE_ONCE = "once per architecture"  # a student's latency.measured: shared, not timed for this job's weights


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (non-JSON values by their str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def architecture_cost(name: str, kwargs: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...],
                      device: torch.device, latency: dict[str, Any]) -> dict[str, Any]:
    """`latency.profile` of this architecture, measured once per process, device, threads and setting: every job
    with those (all the jobs of a stacked group) records the same numbers, and `latency.measured` says so."""
    key = cache_key(name, kwargs, list(input_shape), str(device), torch.get_num_threads(), latency)
    if key not in _COSTS:
        cost = profile(model, input_shape, device, **latency)
        _COSTS[key] = {**cost, "latency": {**cost["latency"], "measured": ARCHITECTURE_ONCE}}
    return _COSTS[key]
