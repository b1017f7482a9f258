"""`logger=tensorboard`: event files in `<run dir>/tensorboard/`, one scalar series per metric (`student/test_acc`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdrun.trackers.base import RunInfo, missing_extra, numbers


class TensorBoardTracker:
    def __init__(self, info: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise missing_extra("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(info.run_dir / "tensorboard"))

    def log_epoch(self, label: str, row: dict[str, float]) -> None:
        for key, value in row.items():
            self.writer.add_scalar(f"{label}/{key}", value, row["epoch"])
        self.writer.flush()

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        for key, value in numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, 0)
        self.writer.close()

    def fail(self, reason: str) -> None:
        self.writer.add_text("failed", reason)
        self.writer.close()
