"""`experiment=NAME` for every verb. A preset (`conf/experiment/NAME.yaml`) is written for `distill`: the
teacher, the student, the dataset, the student's recipe, T and alpha. Each other verb takes the parts it
has, as plain overrides placed before the user's own (which win):

- `train-student`: the dataset, the student and its recipe: the hard-label baseline of a published row;
- `train-teacher`, `inspect-teacher`: the dataset and the teacher (its own recipe lives under teacher.train).

A preset's sweep (`hydra.sweeper.params`) and its distillation settings (T, alpha, loss) stay distill's.
"""

from __future__ import annotations

from typing import Any

import yaml

from kdrun.core.errors import ConfigError
from kdrun.run.config import config_dir

# For each verb other than distill: the config groups a preset may choose, and the keys (with what lies below).
PARTS = {
    "train_student": (("dataset", "student", "optim"), ("epochs", "seed", "dataset", "student", "optim")),
    "train_teacher": (("dataset", "teacher"), ("dataset", "teacher")),
    "inspect_teacher": (("dataset", "teacher"), ("dataset", "teacher")),
}


def expand_presets(config_name: str, args: list[str]) -> list[str]:
    """The arguments with `experiment=NAME` replaced by the parts of the preset this verb has."""
    if config_name not in PARTS or not any(a.startswith("experiment=") for a in args):
        return args
    expanded = []
    for arg in args:
        expanded += preset_overrides(config_name, arg.split("=", 1)[1]) if arg.startswith("experiment=") else [arg]
    return expanded


def preset_overrides(config_name: str, name: str) -> list[str]:
    """The overrides a preset gives this verb: its group choices, then its values, each as `KEY=VALUE`."""
    path = config_dir() / "experiment" / f"{name}.yaml"
    if "," in name or not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown experiment '{name}'; choose one of: {', '.join(options)}")
    preset = yaml.safe_load(path.read_text()) or {}
    groups, keys = PARTS[config_name]
    chosen = [_choice(entry) for entry in preset.get("defaults", [])]
    overrides = [f"{group}={option}" for group, option in chosen if group in groups]
    values = {k: v for k, v in preset.items() if k not in ("defaults", "hydra") and k in keys}
    return overrides + [f"{key}={override_text(value)}" for key, value in _flatten(values)]


def _choice(entry: Any) -> tuple[str, str]:
    """`{"override /dataset": "cifar100"}` -> ("dataset", "cifar100")."""
    [(key, option)] = entry.items() if isinstance(entry, dict) else [("", "")]
    return key.removeprefix("override").strip().lstrip("/"), str(option)


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs = []
    for key, value in values.items():
        if isinstance(value, dict):
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def override_text(value: Any) -> str:
    """A plain value as Hydra's override grammar reads it back: numbers, booleans and null bare, text quoted."""
    if isinstance(value, list):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return repr(value)
