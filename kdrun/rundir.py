"""The run directory's one owner: its file names, atomic writes, metrics, status and summary.

`summary.json` is written last: its presence means the run finished. A run that fails
gets `status.json` with the error instead, so nothing unfinished looks finished.
No torch here: the CLI and `report` use it too.

In a job of several processes (torchrun, SLURM) only rank 0 writes: every write to a run
directory or the teacher store goes through this module, which drops the other ranks' writes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"  # written last: the run finished
STATUS = "status.json"  # a run that did not finish: failed or interrupted
METRICS = "metrics.jsonl"  # one JSON object per epoch
CHECKPOINT = "checkpoint.pt"  # the trained model (kdrun.checkpoint format)
LAST = "last.pt"  # the resumable training state (kdrun.trainstate)
HYDRA = ".hydra"  # Hydra's resolved config and overrides

_writes = True  # false on the ranks other than 0 of a distributed job


def follow_rank(rank: int) -> None:
    """Let only rank 0 of a distributed job write (see the module docstring)."""
    global _writes
    _writes = rank == 0


def writes() -> bool:
    """Whether this process writes run outputs (false on ranks other than 0)."""
    return _writes


def write_atomic(path: Path, write: Any) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync, then rename over `path` (rank 0 only)."""
    if not _writes:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    if not _writes:
        return
    with open(run_dir / METRICS, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / SUMMARY
    write_json(path, summary)
    return path


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """`status.json` for a run that did not finish: `failed` (with the error) or `interrupted` (with how to resume)."""
    write_json(run_dir / STATUS, {"status": status, **fields})


def delete_status(run_dir: Path) -> None:
    """A resumed run is running again: its old `interrupted` status no longer holds."""
    if not _writes:
        return
    (run_dir / STATUS).unlink(missing_ok=True)


def write_failure(run_dir: Path, message: str) -> None:
    write_status(run_dir, "failed", error=message)


def rewrite_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl by `rows` (a resumed run's history), so no epoch appears twice."""
    write_atomic(run_dir / METRICS, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


