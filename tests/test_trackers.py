"""logger=mlflow and logger=wandb (offline): what they logged, read back through the libraries' own APIs and
formats, equals the run dir's metrics.jsonl and summary.json."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from conftest import kdrun, metric_rows, run_dirs, summary

TINY = ["dataset=fake", "progress=false", "epochs=2", "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1"]


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-<id>.wandb`): wandb's protobuf `Record`s in LevelDB's log framing
    (32 KiB blocks, a 7-byte header per chunk: crc, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data, block, records, chunk = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    position = 7  # the file's own header: magic, identifier, version
    while position + 7 <= len(data):
        room = block - position % block
        length, kind = struct.unpack("<HB", data[position + 4:position + 7]) if room >= 7 else (0, 0)
        if kind == 0:  # the zero padding at a block's end
            position += room
            continue
        chunk += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_run(run_file: Path) -> dict:
    """A W&B offline run as written: its run record, history rows and final summary."""
    history, final, run = [], {}, None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            final.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
    return {"run": run, "history": history, "summary": final}


def test_a_sweep_logs_to_one_mlflow_experiment_and_one_wandb_group_what_its_run_dirs_hold(workdir):
    run = kdrun(workdir, "train-student", "-m", *TINY, "logger=[mlflow,wandb]", "optim.lr=0.005,0.02")
    assert run.returncode == 0, run.stderr
    assert "alembic" not in run.stderr + run.stdout and "mlflow" not in run.stderr, "MLflow's INFO lines are silenced"
    jobs = run_dirs(workdir, "train_student")
    [sweep] = {job.parent for job in jobs}
    group = f"train_student-sweep/{sweep.name}"
    names = {f"{group}/{job.name}" for job in jobs} | {f"{group}/report"}  # the report: one more run of the group

    logged = {r["run"].display_name: r for r in map(wandb_run, (workdir / "outputs/wandb").glob("offline-run-*/*.wandb"))}
    assert len(jobs) == 2 and set(logged) == names and {r["run"].run_group for r in logged.values()} == {group}
    for job in jobs:
        wb = logged[f"{group}/{job.name}"]
        assert [(row["epoch"], row["student/test_acc"]) for row in wb["history"] if "epoch" in row] == \
            [(row["epoch"], row["test_acc"]) for row in metric_rows(job)]
        assert wb["summary"]["test_acc"] == summary(job)["test_acc"]
        assert wb["summary"]["best_test_acc"] == summary(job)["best_test_acc"]
    assert any(key.startswith("plots/acc_") for row in logged[f"{group}/report"]["history"] for key in row)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"kdrun/{group}")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == names
    first, result = runs[f"{group}/0"], summary(sweep / "0")
    assert first.info.status == "FINISHED" and first.data.params["optim.lr"] == "0.005"
    history = client.get_metric_history(first.info.run_id, "student/test_acc")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["test_acc"]) for r in metric_rows(sweep / "0")]
    assert first.data.metrics["test_acc"] == result["test_acc"]
    assert first.data.metrics["latency.batch1_ms_median"] == result["latency"]["batch1_ms_median"]
    copy = client.download_artifacts(first.info.run_id, "summary.json", str(workdir))
    assert json.loads(Path(copy).read_text()) == result
    assert {a.path for a in client.list_artifacts(runs[f"{group}/report"].info.run_id)} >= {"report.csv",
                                                                                          "acc_vs_latency.png"}
