"""Shared helpers: run the real CLI in a subprocess, in a temporary working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny settings: a fake 1-D dataset, a thin teacher, one epoch, short latency timing.
FAST = ["dataset=fake", "teacher.kwargs.channels=8", "teacher.train.epochs=1", "progress=false",
        "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1"]


def kdrun(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KDRUN_TEST": "1", **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "kdrun", *args], cwd=cwd, capture_output=True, text=True,
                          env=environment, timeout=240)


def run_dirs(cwd: Path, command: str) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").glob(f"{command}*/**/.hydra"))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
