"""The one exception type that reaches the user as a sentence instead of a traceback, and the one way out."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_ERROR = 2  # a user error (bad input, a failed job); 130/143 mean interrupted


class KdrunError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, on one line."""


class Interrupted(Exception):
    """Training stopped on request (SIGINT/SIGTERM) after a whole step, its state handed to the checkpoint writer.

    Not a KdrunError: nothing is wrong, and the run can be resumed.
    """

    def __init__(self, epoch: int, step: int, saved: bool) -> None:
        super().__init__(f"interrupted in epoch {epoch} after step {step}")
        self.epoch, self.step, self.saved = epoch, step, saved


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """The first line of an error's message (at most `limit` characters): enough for a one-line report."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


def fail(message: str, run_dir: Path | None = None) -> int:
    """The one failure path of the CLI and the task: `status.json` says `failed` (where a run dir is
    ours to write), one line on stderr, and the exit code to return.

    Called while handling the error, HYDRA_FULL_ERROR=1 re-raises it for the traceback.
    """
    if run_dir is not None:
        from kdrun.rundir import write_failure

        try:
            write_failure(run_dir, message)
        except OSError:  # the disk that failed the run may fail this too
            pass
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and sys.exc_info()[0] is not None:
        raise
    print(f"kdrun: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR
