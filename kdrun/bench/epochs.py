"""`make bench`: what a distillation epoch costs, measured side by side in one process.

For a teacher/student pair on the same data it runs the scenarios in turn, `--rounds` times
round-robin (so a change in machine load hits every scenario alike), each time for
`--epochs` epochs, and reports the steady-state seconds per epoch (median over rounds, the
first epoch of each run dropped as a warm-up) and the one-off set-up time outside the epochs
(for the cached path: the teacher's pass over the training set):
  plain        the student alone on hard labels (kdrun's loop)
  kd cached    distillation with the teacher's logits computed once (no augmentation)
  kd live      distillation with the teacher run on every batch (what augmentation needs)
  feature      a feature method (the pair's `feature_method`): the teacher runs live for its stage
               features, plus the method's own parts (CRD's memory bank, ReviewKD's fusion)
  bare loop    a hand-written PyTorch loop doing the cached-KD work, as a yardstick
  compiled     (with --compile) kd cached with the student's step under torch.compile
and prints images/s and ratios to `plain`, plus device, dtype, batch size and threads.

`streaming` (in the default `--pairs`) times the two ways data reaches the loop on the same
images: a folder of generated JPEGs read, decoded and transformed by DataLoader workers every
epoch, against the same images decoded once into a tensor on the device. Both train the same
small student without random augmentation (so both do the same work per step and the data
path sets the pace); the augmented streamed path (RandomResizedCrop + flip in the workers) is a
third row.
`--sweep` adds the README's 24-job sweep run serially, with joblib and stacked (kdrun.bench.sweep;
several minutes; `make bench` passes it, `BENCH_ARGS=` leaves it out). Results also go to outputs/bench/<time>.json.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from rich.table import Table

from kdrun.core.console import console
from kdrun.core.files import write_json
from kdrun.core.runtime import resolve_device, seed_everything
from kdrun.data import TensorData, load_dataset
from kdrun.data.synthetic import write_image_folder
from kdrun.methods.base import MethodContext, build_method
from kdrun.methods.losses import KDLoss
from kdrun.models import build_model
from kdrun.train.engine import fit
from kdrun.train.evaluate import predict
from kdrun.train.recipe import Recipe, autocast

PAIRS = {
    "mnist1d": {"teacher": ("cnn1d", {"channels": 64}), "student": ("mlp", {"hidden": [100, 100]}),
                "dataset": ("mnist1d", {}), "batch_size": 100,
                # the mlp has no spatial stages (no reviewkd); 256 of CRD's 16384 negatives keep make bench short
                "feature_method": {"name": "crd", "negatives": 256}},
    "cifar": {"teacher": ("resnet32x4", {}), "student": ("resnet8x4", {}),
              "dataset": ("fake", {"shape": [3, 32, 32], "num_classes": 100, "num_train": 256, "num_test": 64}),
              "batch_size": 64, "feature_method": {"name": "reviewkd"}},
    "cifar_resnet56": {"teacher": ("resnet56", {}), "student": ("resnet20", {}),
                       "dataset": ("fake", {"shape": [3, 32, 32], "num_classes": 100, "num_train": 256,
                                            "num_test": 64}),
                       "batch_size": 64, "feature_method": {"name": "reviewkd"}},
}


def _bare_loop(student: torch.nn.Module, teacher: torch.nn.Module, data: TensorData, recipe: Recipe,
               loss: KDLoss) -> list[float]:
    """The same work as kdrun's cached-KD run, written the way a paper's script would."""
    teacher_logits = predict(teacher, data.x_train)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.lr)
    seconds = []
    for _ in range(recipe.epochs):
        started = time.perf_counter()
        student.train()
        for index in torch.randperm(len(data.x_train), device=data.x_train.device).split(recipe.batch_size):
            with autocast(data.x_train.device):
                logits = student(data.x_train[index]).float()
            total = loss(logits, data.y_train[index], teacher_logits[index]).total
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        (predict(student, data.x_test).argmax(1) == data.y_test).float().mean().item()  # syncs the device
        seconds.append(time.perf_counter() - started)
    return seconds


def _round_robin(scenarios: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, dict[str, float]]:
    """Steady-state seconds per epoch (median over rounds, each run's first epoch dropped) and the
    median one-off set-up time, with the scenarios interleaved round by round."""
    epochs: dict[str, list[float]] = {label: [] for label in scenarios}
    setups: dict[str, list[float]] = {label: [] for label in scenarios}
    for _ in range(rounds):
        for label, run in scenarios.items():
            started = time.perf_counter()
            seconds = run()
            setups[label].append(time.perf_counter() - started - sum(seconds))
            epochs[label].extend(seconds[1:])
    return {label: {"epoch_seconds": statistics.median(epochs[label]),
                    "setup_seconds": statistics.median(setups[label])} for label in scenarios}


def _epoch_seconds(history: list[dict[str, float]]) -> list[float]:
    return [row["seconds"] for row in history]


def run_bench(pair: str, device_name: str, epochs: int, rounds: int, compile: bool = False,
              sizes: dict | None = None) -> dict:
    """The pair's scenarios side by side; `sizes` overrides its dataset's kwargs and batch size (e.g. the GPU check's
    larger sets, its CPU smoke test's tiny ones)."""
    spec = PAIRS[pair]
    device = resolve_device(device_name)
    name, kwargs = spec["dataset"]
    sizes = dict(sizes or {})
    batch_size = sizes.pop("batch_size", spec["batch_size"])
    data = load_dataset(name, "~/.cache/kdrun/data", False, False, {**kwargs, **sizes}).to(device)
    seed_everything(0)
    teacher = build_model(spec["teacher"][0], data.num_classes, data.input_shape, spec["teacher"][1]).to(device)
    student = build_model(spec["student"][0], data.num_classes, data.input_shape, spec["student"][1]).to(device)
    recipe, loss = Recipe(epochs=epochs, batch_size=batch_size, lr=1e-3), KDLoss(4.0, 0.9)
    live = replace(data, augment=lambda x, generator: x)  # identity "augmentation" forces the live path
    method_options = spec["feature_method"]

    def feature_method() -> torch.nn.Module:
        return build_method(method_options, MethodContext(4.0, 0.9, data.num_classes, len(data.x_train), student,
                                                          teacher, data.x_train[:2], data.y_train))

    scenarios = {
        "plain (student alone)": lambda: _epoch_seconds(fit(student, data, recipe, device)),
        "kd, cached teacher logits": lambda: _epoch_seconds(
            fit(student, data, recipe, device, teacher=teacher, loss=loss)),
        "kd, teacher run every batch": lambda: _epoch_seconds(
            fit(student, live, recipe, device, teacher=teacher, loss=loss)),
        f"{method_options['name']}, teacher features live": lambda: _epoch_seconds(
            fit(student, data, recipe, device, teacher=teacher, loss=feature_method())),
        "bare PyTorch loop (cached kd)": lambda: _bare_loop(student, teacher, data, recipe, loss),
    }
    if compile:
        scenarios["kd, cached, torch.compile"] = lambda: _epoch_seconds(
            fit(student, data, replace(recipe, compile=True), device, teacher=teacher, loss=loss))
    return {"pair": pair, "teacher": spec["teacher"][0], "student": spec["student"][0], "dataset": name,
            "train_samples": len(data.x_train), "batch_size": recipe.batch_size, "device": str(device),
            "dtype": "bf16 autocast" if device.type == "cuda" else "float32", "threads": torch.get_num_threads(),
            "memory_format": "channels_last" if device.type == "cuda" else "contiguous",
            "epochs_per_run": epochs, "rounds": rounds, "scenarios": _round_robin(scenarios, rounds)}


# A small student, so that the data path rather than the model sets the pace on a CPU.
STREAMING = {"student": ("mlp", {"hidden": [256]}), "classes": 10, "images": 640, "side": 32,
             "batch_size": 64, "workers": 2}


def _in_memory(data, device: torch.device) -> TensorData:
    """The streamed dataset's images, decoded once with its evaluation transform, as tensors on `device`."""
    x_train, y_train = (torch.cat(parts) for parts in zip(*data._stream(
        "train_plain", [[(i, 0) for i in range(start, min(start + 256, data.train_size))]
                        for start in range(0, data.train_size, 256)], torch.device("cpu"))))
    x_test, y_test = (torch.cat(parts) for parts in zip(*data.test_batches(torch.device("cpu"))))
    return TensorData(data.name, x_train, y_train, x_test, y_test, data.num_classes).to(device)


def run_streaming_bench(device_name: str, epochs: int, rounds: int, workers: int, images: int) -> dict:
    spec = STREAMING
    device = resolve_device(device_name)
    with tempfile.TemporaryDirectory() as folder:
        write_image_folder(Path(folder), classes=spec["classes"], train_per_class=max(1, images // spec["classes"]),
                           val_per_class=8, size=(spec["side"] + 8, spec["side"] + 16), formats=("jpg",))
        stream = {augment: load_dataset("image_folder", folder, False, augment, {}, image_size=spec["side"],
                                        workers=workers) for augment in (False, True)}
        memory = _in_memory(stream[False], device)
        seed_everything(0)
        student = build_model(spec["student"][0], memory.num_classes, memory.input_shape, spec["student"][1])
        recipe = Recipe(epochs=epochs, batch_size=spec["batch_size"], lr=1e-3)
        scenarios = {
            "in memory (tensors on the device)": lambda: _epoch_seconds(fit(student, memory, recipe, device)),
            f"streamed ({workers} DataLoader workers)": lambda: _epoch_seconds(
                fit(student, stream[False], recipe, device)),
            f"streamed + RandomResizedCrop/flip ({workers} workers)": lambda: _epoch_seconds(
                fit(student, stream[True], recipe, device)),
        }
        timings = _round_robin(scenarios, rounds)
    return {"pair": "streaming", "student": spec["student"][0], "dataset": f"generated JPEG folder, "
            f"{spec['side']}x{spec['side']} crops", "train_samples": memory.train_size, "batch_size": recipe.batch_size,
            "workers": workers, "device": str(device), "dtype": "bf16 autocast" if device.type == "cuda" else "float32",
            "threads": torch.get_num_threads(), "epochs_per_run": epochs, "rounds": rounds, "scenarios": timings}


def show_streaming(result: dict) -> None:
    scenarios, n = result["scenarios"], result["train_samples"]
    memory = next(iter(scenarios.values()))["epoch_seconds"]
    table = Table(title=f"{result['student']} on {result['dataset']}, {n} images ({result['device']}, "
                        f"{result['dtype']}, batch {result['batch_size']}, {result['threads']} threads)")
    for column in ("data path", "s/epoch", "images/s", "ratio to in memory"):
        table.add_column(column, justify="left" if column == "data path" else "right")
    for label, timing in scenarios.items():
        seconds = timing["epoch_seconds"]
        table.add_row(label, f"{seconds:.3f}", f"{n / seconds:,.0f}", f"{seconds / memory:.2f}x")
    console.print(table)


def show(result: dict) -> None:
    scenarios, n = result["scenarios"], result["train_samples"]
    plain = scenarios["plain (student alone)"]["epoch_seconds"]
    table = Table(title=f"{result['teacher']} -> {result['student']} on {result['dataset']} "
                        f"({result['device']}, {result['dtype']}, batch {result['batch_size']}, "
                        f"{result['threads']} threads)")
    for column in ("epoch", "s/epoch", "images/s", "ratio to plain", "one-off set-up s"):
        table.add_column(column, justify="left" if column == "epoch" else "right")
    for label, timing in scenarios.items():
        seconds = timing["epoch_seconds"]
        table.add_row(label, f"{seconds:.3f}", f"{n / seconds:,.0f}", f"{seconds / plain:.2f}x",
                      f"{timing['setup_seconds']:.3f}")
    console.print(table)
    kdrun_epoch = scenarios["kd, cached teacher logits"]["epoch_seconds"]
    console.print(f"kdrun cached-kd epoch / bare loop epoch: "
                  f"{kdrun_epoch / scenarios['bare PyTorch loop (cached kd)']['epoch_seconds']:.2f}x")


def write_record(record: dict, name: str) -> Path:
    """A bench's results as outputs/bench/<name>.json (printed), where the next run can compare against them."""
    out = Path("outputs/bench") / f"{name}.json"
    write_json(out, record)
    console.print(f"written: {out.resolve()}")
    return out
