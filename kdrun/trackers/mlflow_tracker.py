"""`logger=mlflow`: one MLflow run per kdrun run, in a local SQLite store by default
(`<tracker.dir>/mlflow.db`, artifacts in `<tracker.dir>/mlartifacts/`) or at `tracker.mlflow_uri`.

Params are the resolved config (dotted keys), metrics each epoch (`student/test_acc`, step = epoch)
and the summary's numbers at the end; artifacts are summary.json and the run's plots. A sweep's
jobs share one experiment, `<tracker.project>/<sweep>`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from kdrun.trackers.base import RunInfo, flat, missing_extra, numbers

PARAM_CHARS = 6000  # MLflow's limit on one param value
BATCH = 100  # params per log_batch call (MLflow's limit)


def quiet() -> None:
    """MLflow's and alembic's INFO lines (database migrations, experiment creation) off the console."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def experiment_name(info: RunInfo) -> str:
    return f"{info.project}/{info.group}" if info.group else info.project


class MlflowTracker:
    def __init__(self, info: RunInfo) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_extra("mlflow", "mlflow") from None
        quiet()
        info.store.mkdir(parents=True, exist_ok=True)
        uri = info.mlflow_uri or f"sqlite:///{info.store / 'mlflow.db'}"
        # Parallel jobs of a sweep may create the database and the experiment at the same moment.
        with FileLock(str(info.store / ".mlflow.lock")):
            self.client = MlflowClient(tracking_uri=uri)
            name = experiment_name(info)
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(
                name, artifact_location=None if info.mlflow_uri else (info.store / "mlartifacts").as_uri())
        tags = {"kdrun.run_dir": str(info.run_dir), **({"kdrun.group": info.group} if info.group else {})}
        self.run_id = self.client.create_run(experiment, run_name=info.name, tags=tags).info.run_id
        params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in flat(info.config).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def log_epoch(self, label: str, row: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(f"{label}/{key}", float(value), now, step) for key, value in row.items() if key != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(key, value, 0, 0) for key, value in numbers(summary).items()]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, reason: str) -> None:
        self.client.set_tag(self.run_id, "kdrun.failure", reason[:PARAM_CHARS])
        self.client.set_terminated(self.run_id, "FAILED")
