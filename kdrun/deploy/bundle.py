"""A trained student (and its teacher) made deployable in a run's `export/` folder, checked and measured.

`export/` holds `student.onnx`, `student.int8.onnx` (unless int8 is off), `teacher.onnx` (distill
runs) and `deploy.json`, the same block summary.json gets under `deploy`. The folder is built in a
hidden temporary folder beside it and renamed into place whole: a failed or interrupted export leaves
the run's previous files (and any earlier export) as they were.

The checks: ONNX Runtime's logits against PyTorch's on a test batch (max abs difference, at most
`tolerance`, 1e-4 by default, else the export fails), and the test accuracy of every exported model
under ONNX Runtime. Latency: every ONNX model under the run's latency protocol (kdrun.measure.latency:
interleaved, median + IQR, threads recorded), the teacher first, so `speedups` are what production
would gain over the teacher.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.core.files import write_atomic, write_json
from kdrun.deploy.export import INPUT_NAME, opset_of, to_onnx
from kdrun.deploy.extra import require
from kdrun.deploy.metadata import model_metadata
from kdrun.deploy.quantize import calibration_batches, quantize_int8
from kdrun.deploy.runtime import PROVIDER, Session, accuracy, max_abs_difference
from kdrun.measure.latency import Protocol, measure_forwards

EXPORT_DIR = "export"
DEPLOY_JSON = "deploy.json"
CHECK_BATCH = 256  # test examples compared between ONNX Runtime and PyTorch


@dataclass(frozen=True)
class DeploySettings:
    """The `deploy` config group, plus the run's latency protocol."""

    protocol: Protocol
    int8: bool = True
    calibration_batches: int = 8
    tolerance: float = 1e-4
    seed: int = 0


def file_name(role: str, precision: str) -> str:
    return f"{role}.onnx" if precision == "fp32" else f"{role}.{precision}.onnx"


@contextmanager
def staging(run_dir: Path) -> Iterator[Path]:
    """A hidden folder in `run_dir`, renamed to `export/` if the block completes, else removed."""
    folder = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{EXPORT_DIR}."))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    target = run_dir / EXPORT_DIR
    old = run_dir / f".{EXPORT_DIR}.old.{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(folder, target)
    shutil.rmtree(old, ignore_errors=True)


def export_model(folder: Path, model: nn.Module, data: Any, arch: str, role: str, tolerance: float,
                 check_inputs: torch.Tensor) -> tuple[Session, dict[str, Any]]:
    """`role`.onnx in `folder`, checked against PyTorch; its session and its record. The run's own model is left
    where it is (device, mode): a CPU copy is exported."""
    model = copy.deepcopy(model).cpu().float().eval()
    onnx_bytes = to_onnx(model, data.input_shape, model_metadata(data, arch, role))
    path = folder / file_name(role, "fp32")
    write_atomic(path, lambda handle: handle.write(onnx_bytes))
    session = Session(path)
    difference = max_abs_difference(model, session, check_inputs)
    if not difference <= tolerance:  # NaN fails too
        raise KdrunError(f"the exported {role} disagrees with PyTorch: max abs logit difference {difference:.3g} "
                         f"on {len(check_inputs)} test examples exceeds {tolerance:g}; report the model to kdrun, "
                         "or raise deploy.tolerance")
    return session, {"file": path.name, "bytes": path.stat().st_size, "opset": opset_of(onnx_bytes),
                     "max_abs_diff_vs_torch": difference, "checked_examples": len(check_inputs)}


def deploy(run_dir: Path, student: nn.Module, student_arch: str, data: Any, settings: DeploySettings,
           teacher: Optional[nn.Module] = None, teacher_arch: Optional[str] = None) -> dict[str, Any]:
    """Export, quantize, check and time; the `deploy` block (also written as export/deploy.json)."""
    check_inputs = next(iter(data.test_batches(torch.device("cpu"))))[0][:CHECK_BATCH].cpu()
    test = lambda: data.test_batches(torch.device("cpu"))  # noqa: E731 - a fresh pass each time
    with staging(run_dir) as folder:
        sessions: dict[str, Session] = {}
        models: dict[str, dict[str, Any]] = {}
        if teacher is not None:
            sessions["teacher_fp32"], models["teacher_fp32"] = export_model(
                folder, teacher, data, teacher_arch or "teacher", "teacher", settings.tolerance, check_inputs)
        sessions["student_fp32"], models["student_fp32"] = export_model(
            folder, student, data, student_arch, "student", settings.tolerance, check_inputs)
        if settings.int8:
            int8 = folder / file_name("student", "int8")
            calibration = calibration_batches(data.teacher_reference(torch.device("cpu"))[0], settings.calibration_batches,
                                              settings.protocol.batch_size, settings.seed)
            recipe = quantize_int8(folder / file_name("student", "fp32"), int8, calibration, INPUT_NAME)
            sessions["student_int8"] = Session(int8)
            models["student_int8"] = {"file": int8.name, "bytes": int8.stat().st_size, "quantization": recipe}
        for name, session in sessions.items():
            models[name]["test_acc"] = accuracy(session, test())
        timed = measure_forwards(sessions, data.input_shape, torch.device("cpu"), settings.protocol)
        block = {"runtime": runtime_versions(), "provider": PROVIDER,
                 "ort_threads": sessions["student_fp32"].threads, "torch_threads": torch.get_num_threads(),
                 "models": {name: {**models[name], "latency": timed["latency"][name]} for name in sessions},
                 **speedups(timed, list(sessions))}
        if "student_int8" in models:
            block["int8_acc_drop"] = models["student_fp32"]["test_acc"] - models["student_int8"]["test_acc"]
        write_json(folder / DEPLOY_JSON, block)
    return block


def speedups(timed: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Each model's batch-1 and eval-batch speedup over the first (the teacher, or the fp32 student)."""
    if len(names) == 2:
        return {"speedup_over": names[0], "speedups": {names[1]: timed["speedup"]}}
    if len(names) > 2:
        return {"speedup_over": names[0], "speedups": timed["speedups"]}
    return {}


def runtime_versions() -> dict[str, str]:
    return {name: require(name).__version__ for name in ("onnx", "onnxruntime", "onnxscript")}
