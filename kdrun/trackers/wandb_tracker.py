"""`logger=wandb`: one Weights & Biases run per kdrun run, offline by default (`tracker.wandb_mode`), its files
in `<tracker.dir>/wandb/` for `wandb sync` later.

The config is the resolved config, each epoch is logged with its `epoch` (`student/test_acc`), the
summary is the run's summary.json, the run's plots are logged as images and summary.json is kept
with the run's files. A sweep's jobs share one group, named after the sweep.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kdrun.trackers.base import RunInfo, missing_extra


class WandbTracker:
    def __init__(self, info: RunInfo) -> None:
        try:
            import wandb
        except ImportError:
            raise missing_extra("wandb", "wandb") from None
        self.wandb = wandb
        info.store.mkdir(parents=True, exist_ok=True)
        # silent + console off: kdrun's console stays kdrun's; no requirements list or code copied into the run.
        settings = wandb.Settings(silent=True, console="off", save_code=False, x_save_requirements=False,
                                  x_disable_stats=True)
        self.run = wandb.init(project=info.project, group=info.group, name=info.name, config=info.config,
                              dir=str(info.store), mode=info.wandb_mode, settings=settings, reinit="create_new")

    def log_epoch(self, label: str, row: dict[str, float]) -> None:
        self.run.log({"epoch": row["epoch"], **{f"{label}/{k}": v for k, v in row.items() if k != "epoch"}})

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        self.run.summary.update(summary)
        images = {f"plots/{p.stem}": self.wandb.Image(str(p)) for p in files if p.suffix == ".png"}
        if images:
            self.run.log(images)
        for path in files:
            if path.suffix != ".png":  # files in the run's folder travel with it (`wandb sync`)
                shutil.copy2(path, Path(self.run.dir) / path.name)
        self.run.finish()

    def fail(self, reason: str) -> None:
        self.run.summary.update({"failed": reason})
        self.run.finish(exit_code=1)
