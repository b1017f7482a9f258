"""Files written whole or not at all, and by one process of a job.

`write_atomic` writes to a temporary file beside the target, fsyncs and renames it over the
target, so a reader (another job, a resumed run, `kdrun report`) never sees half a file: the
run dir, model checkpoints, the teacher store and the dataset cache all write through it. In a
job of several processes (torchrun, SLURM) only rank 0 writes outputs (`follow_rank`, `writes`).
No torch here.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process umask (reading it means setting it)."""
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
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would keep a shared teacher store private
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
