"""`kdrun export RUN_DIR`, and `export=true` at the end of train-student and distill: the run's student (and
teacher) as ONNX and INT8 in RUN_DIR/export/, checked and timed under ONNX Runtime (kdrun.deploy).

A finished run stays finished: at the end of training, a failed export is recorded in summary.json as
`deploy: {"error": ...}` with a warning, never as a failed run (the trained student is good; `kdrun
export RUN_DIR` tries again). `kdrun export RUN_DIR` on a finished run holds the run's lock, rewrites
summary.json with the new `deploy` block only once export/ is complete, and on failure leaves the run
as it was and exits with one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.commands.arguments import OneLineParser
from kdrun.commands.record import latency_protocol
from kdrun.core.errors import KdrunError, first_line
from kdrun.core.runtime import set_threads
from kdrun.data import load_dataset
from kdrun.deploy.bundle import DeploySettings, deploy
from kdrun.models.checkpoint import rebuild_model
from kdrun.run.config import DeployConfig
from kdrun.run.rundir import CHECKPOINT, SUMMARY, owned, saved_config, write_summary
from kdrun.teachers.store import load_teacher

log = logging.getLogger("kdrun")

STUDENT_COMMANDS = ("train_student", "distill")


def settings(cfg: DictConfig) -> DeploySettings:
    """The run's `deploy` group and latency protocol (the eval batch: latency.batch_size, else the training batch)."""
    return DeploySettings(latency_protocol(cfg), cfg.deploy.int8, cfg.deploy.calibration_batches,
                          cfg.deploy.tolerance, cfg.seed)


def export_block(cfg: DictConfig, run_dir: Path, data: Any, student: torch.nn.Module,
                 teacher: Optional[torch.nn.Module] = None) -> dict[str, Any]:
    """The `deploy` block of summary.json at the end of a run; a failure is recorded, not raised."""
    use_teacher = teacher if cfg.deploy.teacher else None
    try:
        block = deploy(run_dir, student, cfg.student.name, data, settings(cfg), use_teacher,
                       cfg.teacher.name if use_teacher is not None else None)
    except Exception as error:  # noqa: BLE001 - whatever breaks the export, the trained student is kept
        message = str(error) if isinstance(error, KdrunError) else f"{type(error).__name__}: {first_line(error)}"
        log.warning("export failed, the run itself finished: %s (after fixing it: kdrun export %s)", message, run_dir)
        return {"error": message}
    log.info("export: %s", deploy_line(block))
    return block


def deploy_line(block: dict[str, Any]) -> str:
    """One line of what export measured: accuracy and batch-1 time under ONNX Runtime per model."""
    parts = [f"{name} acc {100 * m['test_acc']:.2f}% {m['latency']['batch1_ms_median']:.3f} ms"
             for name, m in block["models"].items()]
    gains = [f"{name} {s['batch1']:.1f}x" for name, s in block.get("speedups", {}).items()]
    return "; ".join(parts) + (f"; batch-1 speedup over {block['speedup_over']}: {', '.join(gains)}" if gains else "")


def deploy_notes(summary: dict[str, Any]) -> list[str]:
    """The results table's line about the export, if the run exported."""
    block = summary.get("deploy")
    if block is None:
        return []
    return [f"export failed (the run finished): {block['error']}" if "error" in block
            else f"ONNX Runtime: {deploy_line(block)}"]


def finished_student(run_dir: Path) -> dict[str, Any]:
    """summary.json of a finished train-student or distill run, or one line saying what is missing."""
    if not run_dir.is_dir():
        raise KdrunError(f"{run_dir} is not a directory; pass a run directory of train-student or distill")
    summary_path, checkpoint = run_dir / SUMMARY, run_dir / CHECKPOINT
    if not summary_path.is_file() or not checkpoint.is_file():
        missing = SUMMARY if not summary_path.is_file() else CHECKPOINT
        raise KdrunError(f"{run_dir} holds no finished student (no {missing}); pass the directory of a "
                         "train-student or distill run that finished, or resume it first")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        raise KdrunError(f"{summary_path} cannot be read as JSON; it was damaged or edited") from None
    if not isinstance(summary, dict) or summary.get("command") not in STUDENT_COMMANDS:
        kind = summary.get("command") if isinstance(summary, dict) else "unknown"
        raise KdrunError(f"{run_dir} is a {kind} run, not a student's; pass a train-student or distill run dir")
    return summary


def parser() -> argparse.ArgumentParser:
    result = OneLineParser(
        prog="kdrun export", description="Export a finished run's student as ONNX (and INT8) into RUN_DIR/export/, "
        "check it against PyTorch, measure accuracy and latency under ONNX Runtime; adds `deploy` to summary.json.")
    result.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished train-student or distill run")
    result.add_argument("--no-int8", action="store_true", help="export the float model alone")
    result.add_argument("--calibration-batches", type=int, default=None, metavar="N",
                        help="training batches that calibrate INT8 ranges (default: the run's deploy.calibration_batches)")
    return result


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    run_dir = args.run_dir.expanduser().resolve()
    summary = finished_student(run_dir)
    with owned(run_dir):
        cfg = OmegaConf.load(saved_config(run_dir))
        if "deploy" not in cfg:  # a run from before kdrun exported: the defaults
            cfg.deploy = OmegaConf.structured(DeployConfig)
        if args.no_int8:
            cfg.deploy.int8 = False
        if args.calibration_batches is not None:
            if args.calibration_batches < 1:
                raise KdrunError(f"--calibration-batches must be >= 1 (got {args.calibration_batches})")
            cfg.deploy.calibration_batches = args.calibration_batches
        set_threads(cfg.threads)
        d = cfg.dataset
        data = load_dataset(d.name, d.data_dir, False, False, OmegaConf.to_container(d.kwargs, resolve=True),
                            image_size=d.image_size, workers=d.workers)
        teacher = None
        if cfg.command == "distill" and cfg.deploy.teacher and Path(str(summary["teacher"]["checkpoint"])).is_file():
            teacher = load_teacher(Path(summary["teacher"]["checkpoint"]), cfg.teacher, data, torch.device("cpu")).model
        student, _ = rebuild_model(run_dir / CHECKPOINT)
        block = deploy(run_dir, student, cfg.student.name, data, settings(cfg), teacher,
                       cfg.teacher.name if teacher is not None else None)
        write_summary(run_dir, {**summary, "deploy": block})
    print(f"kdrun export: {deploy_line(block)}\nwritten: {run_dir / 'export'}")
    return 0
