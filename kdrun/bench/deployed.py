"""`python -m kdrun.bench --deploy`: the same model in eager PyTorch, ONNX Runtime fp32 and ONNX Runtime INT8,
timed side by side in one process by the latency protocol (interleaved, median + IQR), as ratios to eager.

Models: the demo student (MNIST-1D's mlp 100-100) and resnet8x4 (CIFAR's student), with initial weights
(latency does not depend on what the weights learned); INT8 is calibrated on a few standard-normal
batches, which sets its ranges but not its speed. Accuracy is not this bench's business: see a run's
`deploy` block (docs/deploy.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from rich.table import Table

from kdrun.core.console import console
from kdrun.deploy.export import INPUT_NAME, to_onnx
from kdrun.deploy.quantize import quantize_int8
from kdrun.deploy.runtime import Session
from kdrun.measure.latency import Protocol, measure_forwards
from kdrun.models import build_model

MODELS = {"demo student (mlp)": ("mlp", (1, 40), {"hidden": [100, 100]}),
          "resnet8x4": ("resnet8x4", (3, 32, 32), {})}
CALIBRATION_BATCHES = 4


def bench_model(arch: str, shape: tuple[int, ...], kwargs: dict, folder: Path, protocol: Protocol) -> dict:
    """Eager, ORT fp32 and ORT INT8 latency of one model (the eager model first: the speedups are over it)."""
    torch.manual_seed(0)
    model = build_model(arch, 10, shape, kwargs).eval()
    fp32, int8 = folder / f"{arch}.onnx", folder / f"{arch}.int8.onnx"
    fp32.write_bytes(to_onnx(model, shape, {}))
    calibration = [torch.randn(protocol.batch_size, *shape).numpy() for _ in range(CALIBRATION_BATCHES)]
    quantize_int8(fp32, int8, calibration, INPUT_NAME)
    timed = measure_forwards({"eager": model, "ort_fp32": Session(fp32), "ort_int8": Session(int8)}, shape,
                             torch.device("cpu"), protocol)
    return {"arch": arch, "latency": timed["latency"], "speedups": timed["speedups"]}


def run_deploy_bench(names: list[str] | None = None, protocol: Protocol | None = None) -> dict:
    protocol = protocol or Protocol(batch_size=64, min_reps=50, min_seconds=0.5, max_seconds=5.0)
    with tempfile.TemporaryDirectory() as folder:
        rows = {name: bench_model(*MODELS[name], Path(folder), protocol) for name in (names or list(MODELS))}
    return {"batch_size": protocol.batch_size, "threads": torch.get_num_threads(), "models": rows}


def show_deploy(result: dict) -> None:
    table = Table(title=f"eager PyTorch vs ONNX Runtime fp32 vs ONNX Runtime INT8 (CPU, {result['threads']} threads)")
    for column in ("model", "runtime", "batch-1 ms", f"batch-{result['batch_size']} ms", "batch-1 ratio to eager",
                   f"batch-{result['batch_size']} ratio to eager"):
        table.add_column(column, justify="left" if column in ("model", "runtime") else "right")
    for name, row in result["models"].items():
        for runtime, latency in row["latency"].items():
            gain = row["speedups"].get(runtime, {"batch1": 1.0, "batch": 1.0})
            table.add_row(name, runtime, f"{latency['batch1_ms_median']:.3f}", f"{latency['batch_ms_median']:.3f}",
                          f"{gain['batch1']:.2f}x" + (" *" if latency["contended"] else ""), f"{gain['batch']:.2f}x")
    console.print(table)
    console.print("ratio: eager median / this runtime's median (above 1: faster than eager); *: contended machine")
