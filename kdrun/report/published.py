"""The published accuracies a reproduction is compared with (published.yaml beside this file).

A row is `<experiment>-<method>`: a preset (conf/experiment/<experiment>.yaml) distilled with `loss=<method>`,
the same name as the per-pair settings in conf/experiment_loss/. Each number carries the source it was read
from; a pair without a number for a method simply has no such row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from kdrun.core.errors import KdrunError

PUBLISHED = Path(__file__).with_name("published.yaml")
MODELS = ("teacher", "student")  # the models alone; every other key of an experiment is a method


@dataclass(frozen=True)
class Number:
    """A top-1 accuracy in percent, and the key of the source (`sources` in published.yaml) it was read from."""

    value: float
    source: str


@dataclass(frozen=True)
class PublishedRow:
    name: str
    experiment: str
    method: str
    teacher: Number
    student: Number
    distilled: Number


@cache
def _data() -> dict:
    return yaml.safe_load(PUBLISHED.read_text())


def sources() -> dict[str, str]:
    return dict(_data()["sources"])


@cache
def published_rows() -> dict[str, PublishedRow]:
    rows = {}
    for experiment, numbers in _data()["experiments"].items():
        teacher, student = (Number(*numbers[model]) for model in MODELS)
        for method in (m for m in numbers if m not in MODELS):
            name = f"{experiment}-{method}"
            rows[name] = PublishedRow(name, experiment, method, teacher, student, Number(*numbers[method]))
    return rows


def published_row(name: str) -> PublishedRow:
    """The row called `name`, or one line that says how to list them."""
    rows = published_rows()
    if name not in rows:
        close = sorted(r for r in rows if r.startswith(name.split("-")[0])) or sorted(rows)[:4]
        raise KdrunError(f"no published row '{name}'; rows are <experiment>-<method>, e.g. {', '.join(close[:4])} "
                         "(`kdrun reproduce` lists them all)")
    return rows[name]
