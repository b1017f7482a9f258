"""Shared helpers: run the real CLI in a subprocess, in a temporary working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# How long a subprocess or a test may take before it counts as hung. Generous on purpose: a loaded machine
# makes tests slow, never wrong; only a test about time itself asserts on time.
HANG_GUARD = 1800

# Tiny settings: a fake 1-D dataset, a thin teacher, one epoch, short latency timing.
FAST = ["dataset=fake", "teacher.kwargs.channels=8", "teacher.train.epochs=1", "progress=false",
        "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1"]


def kdrun(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KDRUN_TEST": "1", **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "kdrun", *args], cwd=cwd, capture_output=True, text=True,
                          env=environment, timeout=HANG_GUARD)


def run_dirs(cwd: Path, command: str) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").glob(f"{command}*/**/.hydra"))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def start_kdrun(cwd: Path, *args: str) -> subprocess.Popen:
    """The CLI in the background, for tests that signal or kill it mid-run."""
    environment = {**os.environ, "KDRUN_TEST": "1"}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "kdrun", *args], cwd=cwd, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, process: subprocess.Popen | None = None, timeout: float = HANG_GUARD, poll: float = 0.02) -> None:
    """Poll `condition()` until true; fail early if `process` ended first (the kill would come too late)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before the condition held: "
                                 f"{process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    complete = path.read_text().split("\n")[:-1] if path.exists() else []  # a line being written is left out
    return [json.loads(line) for line in complete]


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread than on oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def slurm_is_up() -> str | None:
    """None when `make test-slurm` runs the tests and its Slurm answers; else why the `slurm` tests cannot run."""
    import shutil

    if os.environ.get("KDRUN_SLURM_TESTS") != "1":
        return "runs jobs on a real Slurm: `make test-slurm` starts one on this machine and runs these tests"
    if shutil.which("sinfo") is None:
        return "no Slurm here: tests/slurm/start.sh installs and starts one (as root)"
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
    if done.returncode != 0 or not set(done.stdout.split()) & {"idle", "mix", "alloc"}:
        return "Slurm did not start (not root?): see tests/slurm/start.sh's line above"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked `slurm` need a real Slurm (`make test-slurm` starts one); elsewhere they skip, saying why."""
    marked = [item for item in items if item.get_closest_marker("slurm")]
    why = slurm_is_up() if marked else None
    for item in marked if why else []:
        item.add_marker(pytest.mark.skip(reason=why))
