"""The one exception type that reaches the user as a sentence instead of a traceback."""


class KdrunError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, on one line."""


class Interrupted(Exception):
    """Training stopped on request (SIGINT/SIGTERM) after a whole step, its state handed to the checkpoint writer.

    Not a KdrunError: nothing is wrong, and the run can be resumed.
    """

    def __init__(self, epoch: int, step: int, saved: bool) -> None:
        super().__init__(f"interrupted in epoch {epoch} after step {step}")
        self.epoch, self.step, self.saved = epoch, step, saved
