"""The run directory's one owner: its file names, atomic writes, metrics, status, summary and lock.

`summary.json` is written last: its presence means the run finished. A run that fails
gets `status.json` with the error instead, so nothing unfinished looks finished. A run
holds its directory's lock (`.kdrun.lock`, an flock the OS drops with the process) for its
whole life, so no second process writes into it. No torch here: the CLI and `report` use it too.

In a job of several processes (torchrun, SLURM) only rank 0 writes run outputs and holds the
lock: the writers here, and `save_checkpoint`/`save_state` (the model files, teacher store
included), skip the other ranks' writes (`follow_rank`, `writes`).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from kdrun.errors import KdrunError

SUMMARY = "summary.json"  # written last: the run finished
STATUS = "status.json"  # a run that did not finish: failed or interrupted
METRICS = "metrics.jsonl"  # one JSON object per epoch
CHECKPOINT = "checkpoint.pt"  # the trained model (kdrun.checkpoint format)
LAST = "last.pt"  # the resumable training state (kdrun.trainstate)
HYDRA = ".hydra"  # Hydra's resolved config and overrides
LOCK = ".kdrun.lock"  # held by the process that runs in this directory
MULTIRUN = "multirun.yaml"  # a sweep directory's own config (written by Hydra's basic sweeper)
OUTPUTS = (SUMMARY, STATUS, METRICS, CHECKPOINT, LAST)  # what makes a directory hold a run


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

_writes = True  # false on the ranks other than 0 of a distributed job


def follow_rank(rank: int) -> None:
    """Let only rank 0 of a distributed job write (see the module docstring)."""
    global _writes
    _writes = rank == 0


def writes() -> bool:
    """Whether this process writes run outputs (false on ranks other than 0)."""
    return _writes


def write_atomic(path: Path, write: Any) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would keep a shared teacher store private
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, RuntimeError) and ("inline_container" in str(error) or "write" in str(error)):
            raise _write_failed(error, path) from error  # torch.save wraps a full disk's OSError in a RuntimeError
        raise


def _write_failed(error: RuntimeError, path: Path) -> OSError:
    cause = error.__context__ if isinstance(error.__context__, OSError) else None
    reason = cause.strerror if cause else f"torch could not write it: {str(error)[:80]}"
    return OSError(cause.errno if cause else errno.EIO, f"{reason}; disk full or file too large?", str(path))


def write_json(path: Path, data: dict[str, Any]) -> None:
    if not _writes:
        return
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


def holds_run(run_dir: Path) -> bool:
    """A run wrote here (finished or not); only `.hydra/` and a log mean it died before writing anything."""
    return any((run_dir / name).exists() for name in OUTPUTS)


def run_state(run_dir: Path) -> tuple[str, str]:
    """`finished`, `failed`, `interrupted` or `unfinished`, and the detail a person needs (error, resume command)."""
    if (run_dir / SUMMARY).exists():
        return "finished", ""
    try:
        status = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return "unfinished", "no summary.json: killed, or still running"
    if not isinstance(status, dict):
        return "unfinished", f"{STATUS} is damaged"
    return str(status.get("status", "unfinished")), str(status.get("error") or status.get("resume") or "")


def forget_unfinished(run_dir: Path) -> None:
    """Clear what a failed attempt left (metrics, status, a checkpoint) so a fresh attempt starts clean here."""
    for name in (STATUS, METRICS, CHECKPOINT):
        (run_dir / name).unlink(missing_ok=True)


def rewrite_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl by `rows` (a resumed run's history), so no epoch appears twice."""
    if not _writes:
        return
    write_atomic(run_dir / METRICS, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))




class RunDirInUse(KdrunError):
    """Another live process holds this run directory."""


def _lock(run_dir: Path) -> FileLock:
    return FileLock(str(run_dir / LOCK), mode=0o666 & ~_umask())


@contextmanager
def owned(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for the life of a run; a second process gets a one-line error instead of writing into it.
    In a job of several processes rank 0 holds it for all."""
    if not _writes:
        yield
        return
    lock = _lock(run_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirInUse(f"{run_dir} is in use by another kdrun process; wait for it to end, "
                         "or start a new run elsewhere") from None
    try:
        yield
    finally:
        lock.release()


def check_not_in_use(run_dir: Path) -> None:
    """Raise the `owned` error now (before Hydra rewrites the dir's .hydra/ and log) if another process holds it."""
    if _writes and (run_dir / LOCK).exists():
        with owned(run_dir):
            pass
