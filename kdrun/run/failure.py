"""The one way out of a failed command or job: `status.json` says `failed`, one line on stderr, exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from kdrun.run.rundir import write_failure

EXIT_ERROR = 2  # a user error (bad input, a failed job); 130/143 mean interrupted


def note_in_log(run_dir: Path, message: str) -> None:
    """The reason in the run's own log file too (not again on the console): a failed run's log never ends
    without a word, whatever reads it later."""
    record = logging.LogRecord("kdrun", logging.ERROR, __file__, 0, "run failed: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.resolve():
            handler.handle(record)


def fail(message: str, run_dir: Path | None = None, rerun_fixes: bool = True) -> int:
    """The one failure path of the CLI and the task: `status.json` says `failed` (where a run dir is
    ours to write), one line on stderr, and the exit code to return.

    Called while handling the error, HYDRA_FULL_ERROR=1 re-raises it for the traceback. `rerun_fixes=False`:
    the job's own settings caused it (kdrun.core.errors), so a sweep's resume will not rerun it.
    """
    if run_dir is not None:
        try:
            write_failure(run_dir, message, rerun_fixes)
        except OSError:  # the disk that failed the run may fail this too
            pass
        note_in_log(run_dir, message)
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and sys.exc_info()[0] is not None:
        raise
    print(f"kdrun: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR
