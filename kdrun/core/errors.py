"""The exceptions that reach the user as a sentence instead of a traceback (the way out is kdrun.run.failure)."""

from __future__ import annotations


class KdrunError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, on one line.

    `rerun_fixes`: whether running the same job again may succeed (a full disk, a missing file, a killed
    rank); False where the job's own settings cause it, so a sweep's resume leaves it alone."""

    rerun_fixes = True


class ConfigError(KdrunError):
    """A config value that composes but makes no sense (T <= 0, alpha > 1, ...)."""

    rerun_fixes = False


class Diverged(KdrunError):
    """The training loss became NaN or inf: with the same settings and seed it would again."""

    rerun_fixes = False


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
