"""Model checkpoints: kdrun's self-describing format, and loading any file as data only.

A checkpoint holds the architecture name and kwargs, num_classes, input shape, dataset, the
config, metrics and the state_dict. Files are read with `torch.load(weights_only=True)`:
a checkpoint is data, never code.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdrun.errors import KdrunError
from kdrun.models import build_model
from kdrun.rundir import write_atomic, writes

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kdrun-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, model: nn.Module, *, arch: str, arch_kwargs: dict[str, Any], num_classes: int,
                    input_shape: tuple[int, ...], dataset: str, config: dict[str, Any],
                    metrics: dict[str, Any]) -> None:
    """A checkpoint that says what it is: enough to rebuild the model without the config (rank 0 writes it)."""
    if not writes():
        return
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "arch": arch, "arch_kwargs": dict(arch_kwargs), "num_classes": num_classes,
        "input_shape": list(input_shape), "dataset": dataset, "config": config, "metrics": metrics,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    write_atomic(path, lambda f: torch.save(payload, f))


def _blocked(error: Exception) -> str:
    """The global that weights_only refused, e.g. 'posix.system', from torch's long message."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    return f"it references {found.group(1)}" if found else "not loadable as weights only"


def _unpickler_reason(error: Exception) -> str:
    """The one informative line of torch's weights-only message (e.g. 'Unsupported operand 110')."""
    noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith(noise)]
    return lines[0][:100] if lines else type(error).__name__


def _damaged(path: Path, reason: str) -> KdrunError:
    return KdrunError(f"{path} is truncated, corrupt or not a torch file ({reason}); "
                      "delete it and train again, or pass a checkpoint written by kdrun")


def load_payload(path: Path) -> Any:
    """Whatever `path` holds, loaded as data only (`weights_only=True`): never runs code from it."""
    if not path.is_file():
        raise KdrunError(f"checkpoint not found: {path}; check the path or train one with `kdrun train-teacher`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # no refused code reference: the bytes are not a valid pickle
            raise _damaged(path, _unpickler_reason(error)) from None
        raise KdrunError(f"{path} holds Python objects beyond tensors and plain data ({_blocked(error)}), so it was "
                         "not loaded: unpickling it could run code; use a checkpoint written by kdrun") from None
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (zip, legacy pickle, EOF)
        first_line = (str(error).splitlines() or [""])[0][:100]
        raise _damaged(path, f"{type(error).__name__}: {first_line}") from None
    return payload


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A kdrun model checkpoint, checked by its header."""
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise KdrunError(f"{path} is not a kdrun checkpoint (no '{CHECKPOINT_FORMAT}' header); "
                         "use one written by `kdrun train-teacher` or `kdrun distill`")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    model = build_model(payload["arch"], payload["num_classes"], tuple(payload["input_shape"]), payload["arch_kwargs"])
    model.load_state_dict(renamed_sequential_keys(model, payload["state_dict"]))
    return model


def renamed_sequential_keys(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Keys of kdrun's CIFAR zoo before it took the peers' module names (`0.0.weight ... 16.2.weight`,
    nn.Sequential indices) renamed by position to `model`'s; any other state_dict is returned as it is.

    The old and new zoo register the same tensors in the same order (their logits agree exactly),
    so a rename is safe when every key is a Sequential index and every shape matches in order.
    """
    expected = model.state_dict()
    if state_dict.keys() == expected.keys() or not all(key.split(".")[0].isdigit() for key in state_dict):
        return state_dict
    if len(state_dict) != len(expected) or any(old.shape != new.shape
                                               for old, new in zip(state_dict.values(), expected.values())):
        return state_dict
    log.info("Renamed the state_dict keys of an earlier kdrun (nn.Sequential indices) to %s's module names",
             type(model).__name__)
    return dict(zip(expected, state_dict.values()))
