"""Model checkpoints: kdrun's self-describing format, the peers' formats, and loading any file as data only.

kdrun's checkpoint holds the architecture name and kwargs, num_classes, input shape, dataset,
the config, metrics and the state_dict. `read_weights` also reads, detected from the file's
contents, the teacher checkpoints people already have:

- RepDistiller's `train_teacher.py` / `train_student.py`: `{'model': state_dict, 'epoch',
  'accuracy' | 'best_acc', 'optimizer'}`, or `{'opt': argparse.Namespace, 'model', ...}`
  (its `*_last.pth`, whose `opt` names the model and dataset);
- mdistiller's trainer: `student_*` / `student_best` (`{'model': state_dict}`) and
  `epoch_*` / `latest` / `best` (`{'model': the distiller's state_dict, 'epoch', 'best_acc',
  'optimizer'}`, whose `module.student.*` weights are taken);
- a plain `state_dict`, or `{'state_dict': state_dict}`; a `module.` prefix (DataParallel) is dropped.

Files are read with `torch.load(weights_only=True)`: a checkpoint is data, never code. The
one class allowed beyond plain data is `argparse.Namespace`, for RepDistiller's `opt`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from kdrun.core.errors import KdrunError, first_line
from kdrun.core.files import write_atomic, writes

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kdrun-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, model: nn.Module, *, arch: str, arch_kwargs: dict[str, Any], num_classes: int,
                    input_shape: tuple[int, ...], dataset: str, config: dict[str, Any],
                    metrics: dict[str, Any], method_state: dict[str, Any] | None = None) -> None:
    """A checkpoint that says what it is: enough to rebuild the model without the config (rank 0 writes it).

    `method_state`: the distillation method's own trained parts (connectors, CRD's memory bank), if any.
    """
    if not writes():
        return
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "arch": arch, "arch_kwargs": dict(arch_kwargs), "num_classes": num_classes,
        "input_shape": list(input_shape), "dataset": dataset, "config": config, "metrics": metrics,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **({"method_state": method_state} if method_state else {}),
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


def load_payload(path: Path, allowed: tuple[type, ...] = ()) -> Any:
    """Whatever `path` holds, loaded as data only (`weights_only=True`, plus the classes in `allowed`):
    never runs code from it."""
    if not path.is_file():
        raise KdrunError(f"checkpoint not found: {path}; check the path or train one with `kdrun train-teacher`")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as error:  # unreadable is not damaged: never advise deleting it
        raise KdrunError(f"cannot read {path} ({error.strerror or error}); check its permissions") from None
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # no refused code reference: the bytes are not a valid pickle
            raise _damaged(path, _unpickler_reason(error)) from None
        raise KdrunError(f"{path} holds Python objects beyond tensors and plain data ({_blocked(error)}), so it was "
                         "not loaded: unpickling it could run code; pass a checkpoint of weights (kdrun's, "
                         "RepDistiller's, mdistiller's or a state_dict)") from None
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (zip, legacy pickle, EOF)
        raise _damaged(path, f"{type(error).__name__}: {first_line(error, 100)}") from None
    return payload


# RepDistiller's / mdistiller's model names where kdrun's differ.
PEER_MODEL_NAMES = {"MobileNetV2": "mobilenetv2", "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2"}
FORMATS = "kdrun's own, RepDistiller's, mdistiller's, or a state_dict"


@dataclass
class Weights:
    """A model's weights as read from a checkpoint file, and what the file records about them (None: nothing)."""

    format: str
    state_dict: dict[str, torch.Tensor]
    sha256: str
    arch: Optional[str] = None
    arch_kwargs: Optional[dict[str, Any]] = None
    num_classes: Optional[int] = None
    input_shape: Optional[tuple[int, ...]] = None
    dataset: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights(path: Path) -> Weights:
    """The weights in `path`, in any format the module lists, recognised by the file's contents."""
    payload = load_payload(path, allowed=(argparse.Namespace,))
    sha256 = file_sha256(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        check_fields(path, payload)
        return Weights("kdrun", payload["state_dict"], sha256, payload["arch"], payload["arch_kwargs"],
                       payload["num_classes"], tuple(payload["input_shape"]), payload["dataset"], payload["metrics"])
    if isinstance(payload, dict) and _is_state_dict(payload.get("model")):
        return _peer_weights(payload, sha256)
    if isinstance(payload, dict) and _is_state_dict(payload.get("state_dict")):
        return Weights("state_dict", _without_prefix(payload["state_dict"], "module."), sha256)
    if _is_state_dict(payload):
        return Weights("state_dict", _without_prefix(payload, "module."), sha256)
    raise KdrunError(f"{path} is not a checkpoint kdrun can read (found {_describe(payload)}); pass {FORMATS} "
                     "(a dict of tensors)")


def rebuild_model(path: Path) -> tuple[nn.Module, Weights]:
    """The model a kdrun checkpoint records (architecture, kwargs, classes, input shape) with its weights loaded,
    in eval mode, and what the file holds; one line for a file that records no architecture."""
    from kdrun.models.registry import build_model

    weights = read_weights(path)
    if weights.arch is None:
        raise KdrunError(f"{path} is a {weights.format} file without its architecture; pass a checkpoint written "
                         "by kdrun, or its exported ONNX file")
    model = build_model(weights.arch, weights.num_classes, weights.input_shape, weights.arch_kwargs or {})
    load_weights(model, weights.state_dict, str(path))
    return model.eval(), weights


def _count(value: Any) -> bool:
    """An integer >= 1 (a bool is an int to Python, not to a checkpoint)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# kdrun's own format, field by field: what each must be, in words for the one-line error.
FIELDS = {
    "arch": (lambda v: isinstance(v, str) and bool(v), "a model name"),
    "arch_kwargs": (lambda v: isinstance(v, dict), "a dict of the model's options"),
    "num_classes": (_count, "an integer >= 1"),
    "input_shape": (lambda v: isinstance(v, (list, tuple)) and len(v) >= 1 and all(map(_count, v)),
                    "a list of positive integers"),
    "dataset": (lambda v: isinstance(v, str), "a dataset name"),
    "metrics": (lambda v: isinstance(v, dict), "a dict"),
    "state_dict": (lambda v: _is_state_dict(v), "a dict of tensors"),  # defined below
}


def check_fields(path: Path, payload: dict[str, Any]) -> None:
    """A kdrun checkpoint whose fields someone edited or truncated fails in one line, not in a KeyError."""
    for name, (valid, meaning) in FIELDS.items():
        if name not in payload:
            raise KdrunError(f"{path} is a kdrun checkpoint without its '{name}' field; it was damaged or edited: "
                             "pass an intact checkpoint, or train the model again")
        if not valid(payload[name]):
            raise KdrunError(f"{path}: the checkpoint's '{name}' must be {meaning} (got {_describe(payload[name])}); "
                             "it was damaged or edited: pass an intact checkpoint, or train the model again")


def _peer_weights(payload: dict[str, Any], sha256: str) -> Weights:
    """RepDistiller's or mdistiller's `{'model': ...}` files."""
    state_dict = _without_prefix(payload["model"], "module.")
    if payload.keys() == {"model"}:
        return Weights("mdistiller", state_dict, sha256)
    if any(key.startswith("student.") for key in state_dict):  # a distiller: student, teacher, extra parts
        return Weights("mdistiller", _without_prefix(state_dict, "student.", keep_others=False), sha256,
                       metrics=_numbers(payload, "epoch", "best_acc"))
    opt = vars(payload["opt"]) if isinstance(payload.get("opt"), argparse.Namespace) else {}
    arch = opt.get("model") or opt.get("model_s")  # train_teacher.py's option, or train_student.py's
    return Weights("repdistiller", state_dict, sha256, arch=PEER_MODEL_NAMES.get(arch, arch),
                   dataset=opt.get("dataset"), metrics=_numbers(payload, "epoch", "accuracy", "best_acc"))


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _without_prefix(state_dict: dict[str, Any], prefix: str, keep_others: bool = True) -> dict[str, Any]:
    """Keys with `prefix` removed when every key has it; with keep_others=False, only the keys that have it."""
    if keep_others and not all(key.startswith(prefix) for key in state_dict):
        return state_dict
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _numbers(payload: dict[str, Any], *keys: str) -> dict[str, float]:
    """The recorded numbers among `keys` (RepDistiller stores its accuracy as a tensor)."""
    return {key: float(payload[key]) for key in keys if isinstance(payload.get(key), (int, float, torch.Tensor))
            and (not isinstance(payload[key], torch.Tensor) or payload[key].numel() == 1)}


def _describe(payload: Any) -> str:
    if isinstance(payload, dict):
        return f"a dict with keys {', '.join(map(str, list(payload)[:5]))}" if payload else "an empty dict"
    return f"a {type(payload).__name__}"


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                 fix: str = "pick the teacher=/teacher.kwargs (and dataset) it was trained with") -> None:
    """Strict loading; a mismatch is one line naming the keys or shapes that differ (`source` says whose, `fix`
    what to do)."""
    state_dict = renamed_sequential_keys(model, state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} is {tuple(state_dict[k].shape)} in the file but {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    differences = ([f"missing keys {_first(missing)}"] if missing else []) + (
        [f"unexpected keys {_first(unexpected)}"] if unexpected else []) + shapes[:2]
    if differences:
        raise KdrunError(f"{source} does not fit this model ({type(model).__name__}): {'; '.join(differences)}; {fix}")
    model.load_state_dict(state_dict)


def _first(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")


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
